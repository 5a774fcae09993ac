// Command smallfiles measures contexts of many small files: a context of
// -files files of one line each, built through kilnd with the SDK (pack,
// upload, build, as `kiln build` does) in two situations, beside `docker
// build` with BuildKit on the same engine, in one run:
//
//   - first build on a fresh farm: a new kilnd (empty CAS, empty agent
//     cache) and a context none of whose files the farm has seen;
//   - first build of a known context on a fresh agent: kilnd restarted on
//     the same data (the farm's CAS holds every file) with its agent's blob
//     cache and work directories removed.
//
// docker builds a context of new files each round (a fresh directory, so
// BuildKit's file sync sends all of it). Each build's Dockerfile starts
// with a WORKDIR named by a fresh nonce, so the engine's cache never
// answers the COPY for either of them. The disk is synced before each
// timed build, so none pays for writing back the files prepared for it.
// Kiln's time is split into packing (hash), upload (manifest + missing
// blobs), the farm's queue, the agent's context fetch (from the build's
// start to its "context:" line; the work directory's part as that line
// says) and the engine (its context sync up to the COPY step, the COPY,
// and the finish).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

type phases struct {
	TotalMS  float64 `json:"total_ms"`
	PackMS   float64 `json:"pack_ms"`
	UploadMS float64 `json:"upload_ms"`
	FetchMS  float64 `json:"agent_fetch_ms"`
	EngineMS float64 `json:"engine_ms"`
	// Finer: the farm's queue (build accepted to running), the work
	// directory's part of the agent's fetch, the engine's sync of the
	// context (context ready to the COPY step's start), the COPY step and
	// the rest (export, the result recorded and seen by the client).
	QueueMS       float64 `json:"queue_ms"`
	MaterializeMS float64 `json:"materialize_ms"`
	SyncMS        float64 `json:"engine_sync_ms"`
	CopyMS        float64 `json:"copy_ms"`
	FinishMS      float64 `json:"finish_ms"`
}

type report struct {
	Benchmark        string    `json:"benchmark"`
	Engine           string    `json:"engine"`
	Files            int       `json:"files"`
	Rounds           int       `json:"rounds"`
	FreshFarm        []phases  `json:"kiln_fresh_farm"`
	FreshAgent       []phases  `json:"kiln_fresh_agent"`
	DockerMS         []float64 `json:"docker_buildkit_ms"`
	FreshFarmMedian  float64   `json:"kiln_fresh_farm_median_ms"`
	FreshAgentMedian float64   `json:"kiln_fresh_agent_median_ms"`
	DockerMedian     float64   `json:"docker_buildkit_median_ms"`
	FreshFarmRatio   float64   `json:"kiln_fresh_farm_over_docker"`
	FreshAgentRatio  float64   `json:"kiln_fresh_agent_over_docker"`
	Target           float64   `json:"target_kiln_over_docker"`
}

func main() {
	rounds := flag.Int("rounds", 3, "rounds of (fresh farm, fresh agent, docker)")
	nfiles := flag.Int("files", 5000, "files of one line each in the context")
	binDir := flag.String("bin", "bin", "directory holding kilnd")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image (scripts/dev-env.sh base makes it)")
	out := flag.String("out", "bench/results/smallfiles.json", "JSON report")
	flag.Parse()
	if err := run(*rounds, *nfiles, *binDir, *base, *out); err != nil {
		fmt.Fprintln(os.Stderr, "smallfiles:", err)
		os.Exit(1)
	}
}

// writeContext writes nfiles one-line files under dir/files (100 per
// directory) whose contents are unique to tag, and a Dockerfile.
func writeContext(dir, base, tag string, nfiles int) error {
	for i := range nfiles {
		p := filepath.Join(dir, "files", fmt.Sprintf("d%03d", i/100), fmt.Sprintf("f%05d.txt", i))
		if i%100 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(p, []byte(fmt.Sprintf("line %d of context %s\n", i, tag)), 0o644); err != nil {
			return err
		}
	}
	return setNonce(dir, base, tag)
}

// setNonce rewrites the Dockerfile so the engine's cache misses the COPY.
func setNonce(dir, base, nonce string) error {
	df := "FROM " + base + "\nWORKDIR /n-" + nonce + "\nCOPY files/ /files/\n"
	return os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644)
}

func run(rounds, nfiles int, binDir, base, out string) error {
	tmp, err := os.MkdirTemp("", "kiln-bench-smallfiles-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	r := report{Benchmark: fmt.Sprintf("context of %d one-line files, first build", nfiles),
		Engine: benchkit.EngineVersion(), Files: nfiles, Rounds: rounds, Target: 1.5}
	stamp := time.Now().UnixNano()
	for round := range rounds {
		tag := fmt.Sprintf("%d-%d", stamp, round)
		dir := filepath.Join(tmp, fmt.Sprintf("round%d", round))
		ctxDir := filepath.Join(dir, "context")
		if err := writeContext(ctxDir, base, "kiln-"+tag, nfiles); err != nil {
			return err
		}
		data := filepath.Join(dir, "farm")
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		syscall.Sync() // each timed build starts with the preparation's writes on disk
		ff, err := kilnRound(binDir, data, ctxDir, filepath.Join(dir, "statcache-1"))
		if err != nil {
			return fmt.Errorf("fresh farm: %w", err)
		}
		r.FreshFarm = append(r.FreshFarm, ff)
		// A fresh agent on the same farm: its cache and work dirs go
		// (kilnd's DATA_DIR/blob-cache and DATA_DIR/work).
		for _, d := range []string{"blob-cache", "work"} {
			if err := os.RemoveAll(filepath.Join(data, "data", d)); err != nil {
				return err
			}
		}
		if err := setNonce(ctxDir, base, "agent-"+tag); err != nil {
			return err
		}
		syscall.Sync()
		fa, err := kilnRound(binDir, data, ctxDir, filepath.Join(dir, "statcache-2"))
		if err != nil {
			return fmt.Errorf("fresh agent: %w", err)
		}
		r.FreshAgent = append(r.FreshAgent, fa)

		dockerDir := filepath.Join(dir, "docker")
		if err := writeContext(dockerDir, base, "docker-"+tag, nfiles); err != nil {
			return err
		}
		c := exec.Command(benchkit.Docker(), "build", "-q", "-t", "kiln-bench/smallfiles:docker", dockerDir)
		c.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
		syscall.Sync()
		dt, _, err := benchkit.Time(c)
		if err != nil {
			return err
		}
		r.DockerMS = append(r.DockerMS, dt)
		fmt.Fprintf(os.Stderr, "round %d: fresh farm %+v, fresh agent %+v, docker %.0f ms\n", round+1, ff, fa, dt)
	}
	med := func(ps []phases, f func(phases) float64) float64 {
		var xs []float64
		for _, p := range ps {
			xs = append(xs, f(p))
		}
		return benchkit.Median(xs)
	}
	total := func(p phases) float64 { return p.TotalMS }
	r.FreshFarmMedian, r.FreshAgentMedian = med(r.FreshFarm, total), med(r.FreshAgent, total)
	r.DockerMedian = benchkit.Median(r.DockerMS)
	r.FreshFarmRatio, r.FreshAgentRatio = r.FreshFarmMedian/r.DockerMedian, r.FreshAgentMedian/r.DockerMedian
	row := func(name string, ps []phases) benchkit.Row {
		f := func(g func(phases) float64) string { return fmt.Sprintf("%.0f", med(ps, g)) }
		return benchkit.Row{Name: name, Values: []string{f(total),
			f(func(p phases) float64 { return p.PackMS }), f(func(p phases) float64 { return p.UploadMS }),
			f(func(p phases) float64 { return p.QueueMS }),
			f(func(p phases) float64 { return p.FetchMS }), f(func(p phases) float64 { return p.MaterializeMS }),
			f(func(p phases) float64 { return p.EngineMS }), f(func(p phases) float64 { return p.SyncMS }),
			f(func(p phases) float64 { return p.CopyMS }), f(func(p phases) float64 { return p.FinishMS })}}
	}
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, %d rounds, medians)", r.Benchmark, r.Engine, rounds),
		[]string{"path", "total ms", "pack ms", "upload ms", "queue ms", "agent fetch ms", "of which work dir ms", "engine ms", "of which sync ms", "COPY ms", "finish ms"},
		[]benchkit.Row{
			row("kiln, fresh farm", r.FreshFarm),
			row("kiln, known context, fresh agent", r.FreshAgent),
			{Name: "docker build (BuildKit, same engine, new files)", Values: []string{fmt.Sprintf("%.0f", r.DockerMedian), "", "", "", "", "", "", "", "", ""}},
		},
		fmt.Sprintf("kiln/docker: fresh farm %.2f, fresh agent %.2f (target ≤ %.1f for both)", r.FreshFarmRatio, r.FreshAgentRatio, r.Target),
		r, out)
}

// kilnRound starts kilnd on data, builds ctxDir through it with the SDK
// and stops it, returning the build's phases.
func kilnRound(binDir, data, ctxDir, statCache string) (phases, error) {
	os.Remove(filepath.Join(data, "ready.json")) // from the last start
	k, err := benchkit.StartKilnd(binDir, data)
	if err != nil {
		return phases{}, err
	}
	defer k.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := kiln.Dial(ctx, k.GRPC, kiln.WithInsecurePlaintext())
	if err != nil {
		return phases{}, err
	}
	defer client.Close()
	os.Setenv("KILN_CACHE_DIR", statCache)
	var p phases
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	start := time.Now()
	bc, err := kiln.PackContext(ctx, ctxDir, "Dockerfile")
	if err != nil {
		return p, err
	}
	packed := time.Now()
	if _, err := client.UploadContext(ctx, bc); err != nil {
		return p, err
	}
	uploaded := time.Now()
	b, err := client.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{Tags: []string{"kiln-bench/smallfiles:kiln"}}})
	if err != nil {
		return p, err
	}
	var running, ready, copyStart, copyEnd time.Time
	var materialize time.Duration
	for ev := range b.Events() {
		switch e := ev.(type) {
		case *kiln.StateChanged:
			if e.State == kilnv1.BuildState_BUILD_STATE_RUNNING && running.IsZero() {
				running = ev.Time()
			}
		case *kiln.LogLine:
			if os.Getenv("SMALLFILES_LOG") != "" {
				fmt.Fprintf(os.Stderr, "%s +%6.0f ms %s\n", ev.Time().Format("15:04:05.000"), ms(ev.Time().Sub(start)), e.Text)
			}
			if strings.HasPrefix(e.Text, "kiln: context:") {
				ready = ev.Time()
				if i := strings.LastIndex(e.Text, " kept in "); i >= 0 {
					materialize, _ = time.ParseDuration(strings.TrimSpace(e.Text[i+len(" kept in "):]))
				}
			}
		case *kiln.StepStarted:
			if strings.HasPrefix(e.Instruction, "COPY") && copyStart.IsZero() {
				copyStart = ev.Time()
			}
		case *kiln.StepFinished:
			if strings.HasPrefix(e.Instruction, "COPY") {
				copyEnd = ev.Time()
			}
		}
	}
	if _, err := b.Wait(ctx); err != nil {
		return p, err
	}
	end := time.Now()
	p.TotalMS = ms(end.Sub(start))
	p.PackMS = ms(packed.Sub(start))
	p.UploadMS = ms(uploaded.Sub(packed))
	if !running.IsZero() && !ready.IsZero() {
		p.FetchMS = ms(ready.Sub(running))
		p.EngineMS = ms(end.Sub(ready))
		p.QueueMS = ms(running.Sub(uploaded))
		p.MaterializeMS = ms(materialize)
	}
	if !ready.IsZero() && !copyStart.IsZero() && !copyEnd.IsZero() {
		p.SyncMS = ms(copyStart.Sub(ready))
		p.CopyMS = ms(copyEnd.Sub(copyStart))
		p.FinishMS = ms(end.Sub(copyEnd))
	}
	return p, nil
}
