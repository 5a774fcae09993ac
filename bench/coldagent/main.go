// Command coldagent measures the automatic warm start: a rebuild with one
// changed file on a fresh engine, through a kilnd whose gateway has
// --cache-registry (the engine imports the lineage's cache that the warm
// farm exported) and through one without, beside the same rebuild on the
// warm engine that built the lineage before, alternating, in one run; wall
// time of `kiln build` and steps cached. The target is cold with the
// registry ≤ 1.5 × warm. It also measures the export's cost: the time from
// the build's finish (its image built and pushed) to the export's event,
// for each export mode the engine has (Docker: inline; buildkitd: registry
// mode=min and mode=max), and checks that the build's reported duration
// (started → finished) holds none of it.
//
// Each engine kind runs on its own engines: Docker engines and buildkitds
// are started fresh (enginetest.Start, enginetest.LaunchBuildKitd); a cold
// build gets a new one each round. Results print as a table and as JSON
// (also written to bench/results/coldagent.json).
//
// Run it with `make bench` (which starts the registry and builds bin/); it
// runs as root (it starts dockerds).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// engineKind starts engines of one kind.
type engineKind struct {
	name string
	// start starts a fresh engine and returns its --engine URL and stop.
	start func(ctx context.Context, name string) (url string, stop func(), err error)
	// modes are the warm start export modes the kind has.
	modes []string
}

// series is one path's timings.
type series struct {
	Kind        string    `json:"engine"`
	Path        string    `json:"path"`
	MedianMS    float64   `json:"median_ms"`
	WallMS      []float64 `json:"wall_ms"`
	CachedSteps []int     `json:"cached_steps"`
	Steps       int       `json:"steps"`
}

// exportCost is one export mode's cost.
type exportCost struct {
	Kind string `json:"engine"`
	Mode string `json:"mode"`
	// AfterFinishMS: from the build's finished event to its export's
	// event (the export ran in between).
	AfterFinishMS []float64 `json:"after_finish_ms"`
	MedianMS      float64   `json:"median_after_finish_ms"`
	// ExportMS is the export's own duration as its event reports it.
	ExportMS []float64 `json:"export_ms"`
	// BuildMS is the build's reported duration (started → finished).
	BuildMS []float64 `json:"build_ms"`
	// Excluded says every export began after its build's finish.
	Excluded bool `json:"build_duration_excludes_export"`
}

type report struct {
	Benchmark string       `json:"benchmark"`
	Runs      int          `json:"runs"`
	Target    float64      `json:"target_ratio"`
	Series    []series     `json:"series"`
	Ratios    []ratio      `json:"ratios"`
	Exports   []exportCost `json:"exports"`
}

type ratio struct {
	Kind         string  `json:"engine"`
	ColdWarm     float64 `json:"cold_with_registry_over_warm"`
	ColdNoneWarm float64 `json:"cold_without_registry_over_warm"`
	Met          bool    `json:"target_met"`
}

func main() {
	runs := flag.Int("runs", 3, "rounds (each: a warm rebuild, a cold one with and one without the registry)")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	kinds := flag.String("engines", "docker,buildkit", "engine kinds to measure: docker, buildkit")
	out := flag.String("out", "bench/results/coldagent.json", "where to write the JSON report")
	flag.Parse()
	if err := run(*runs, *binDir, strings.Split(*kinds, ","), *out); err != nil {
		fmt.Fprintln(os.Stderr, "coldagent:", err)
		os.Exit(1)
	}
}

func run(runs int, binDir string, kinds []string, out string) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "kiln-bench-cold-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	registry := os.Getenv("KILN_TEST_REGISTRY")
	if registry == "" {
		registry = enginetest.DefaultRegistry
	}
	base := enginetest.BusyboxRef() // fresh engines hold it; the registry too
	runID := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffff)
	r := report{Benchmark: "rebuild with one changed file on a fresh engine, with and without the automatic warm start, beside the warm engine", Runs: runs, Target: 1.5}
	var rows []benchkit.Row
	for _, name := range kinds {
		k, err := kind(name)
		if err != nil {
			return err
		}
		ss, cost, err := measureKind(ctx, k, binDir, filepath.Join(tmp, name), registry+"/kiln-bench-cold-"+runID+"-"+name, base, runs)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.Series = append(r.Series, ss...)
		r.Exports = append(r.Exports, cost...)
		warm, cold, none := ss[0].MedianMS, ss[1].MedianMS, ss[2].MedianMS
		ra := ratio{Kind: name, ColdWarm: cold / warm, ColdNoneWarm: none / warm, Met: cold <= r.Target*warm}
		r.Ratios = append(r.Ratios, ra)
		for _, s := range ss {
			rows = append(rows, benchkit.Row{Name: name + ": " + s.Path, Values: []string{fmt.Sprintf("%.0f", s.MedianMS), fmt.Sprintf("%v of %d", s.CachedSteps, s.Steps), ""}})
		}
		for _, c := range cost {
			rows = append(rows, benchkit.Row{Name: name + ": cache export " + c.Mode, Values: []string{
				fmt.Sprintf("%.0f after finish", c.MedianMS), "", fmt.Sprintf("export %.0f ms, build %.0f ms, excluded: %v", benchkit.Median(c.ExportMS), benchkit.Median(c.BuildMS), c.Excluded)}})
		}
	}
	var summary []string
	for _, ra := range r.Ratios {
		summary = append(summary, fmt.Sprintf("%s: cold with registry ÷ warm = %.2f (target ≤ %.1f: %v), cold without ÷ warm = %.2f", ra.Kind, ra.ColdWarm, r.Target, ra.Met, ra.ColdNoneWarm))
	}
	return benchkit.Report(fmt.Sprintf("%s (%d rounds)", r.Benchmark, runs),
		[]string{"path", "median ms", "cached steps per round", "export"}, rows, strings.Join(summary, "\n"), r, out)
}

func kind(name string) (engineKind, error) {
	switch name {
	case "docker":
		return engineKind{name: name, modes: []string{"inline"}, start: func(_ context.Context, n string) (string, func(), error) {
			e, err := enginetest.Start(n)
			if err != nil {
				return "", nil, err
			}
			return "docker://" + strings.TrimPrefix(e.Host, "unix://"), func() { _ = e.Stop() }, nil
		}}, nil
	case "buildkit":
		return engineKind{name: name, modes: []string{"min", "max"}, start: func(ctx context.Context, _ string) (string, func(), error) {
			bk, err := enginetest.LaunchBuildKitd(ctx, enginetest.BuildKitdOptions{})
			if err != nil {
				return "", nil, err
			}
			return "buildkit://" + strings.TrimPrefix(bk.Addr, "unix://"), func() { _ = bk.Stop() }, nil
		}}, nil
	}
	return engineKind{}, fmt.Errorf("unknown engine kind %q (docker, buildkit)", name)
}

// files is revision rev of the benchmark's context: an expensive RUN (30
// MB of layer and a second of CPU), a COPY and RUN of a library file, then
// the file that changes (app.txt) and a RUN after it.
func files(base, lineage string, rev int) map[string]string {
	return map[string]string{
		"Dockerfile": "FROM " + base + "\n" +
			"RUN head -c 30000000 /dev/urandom > /blob && i=0 && while [ $i -lt 300000 ]; do i=$((i+1)); done && echo " + lineage + " > /lineage\n" +
			"COPY lib.txt /lib.txt\n" +
			"RUN cat /lineage /lib.txt > /lib2 && md5sum /blob > /blob.md5\n" +
			"COPY app.txt /app.txt\n" +
			"RUN cat /app.txt /blob.md5\n",
		"lib.txt": "library of " + lineage + "\n",
		"app.txt": fmt.Sprintf("app revision %d\n", rev),
	}
}

func writeFiles(dir string, fs map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, body := range fs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// farm is a kilnd on one engine.
type farm struct {
	k    *benchkit.Kilnd
	stop func()
}

func startFarm(binDir, dir, name, url string, extra ...string) (*farm, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	k, err := benchkit.StartKilnd(binDir, dir, append([]string{"--name", name, "--engine", url}, extra...)...)
	if err != nil {
		return nil, err
	}
	return &farm{k: k, stop: k.Stop}, nil
}

// build runs `kiln build` of lineage's revision rev through f and returns
// its wall time, build ID and steps.
func (f *farm) build(binDir, dir, base, lineage string, rev int) (ms float64, id string, steps, cached int, err error) {
	ctxDir := filepath.Join(dir, fmt.Sprintf("ctx-%d", rev))
	if err := writeFiles(ctxDir, files(base, lineage, rev)); err != nil {
		return 0, "", 0, 0, err
	}
	meta := filepath.Join(dir, fmt.Sprintf("meta-%d-%d.json", rev, time.Now().UnixNano()))
	c := exec.Command(filepath.Join(binDir, "kiln"), "build", "--gateway", f.k.GRPC, "--progress", "quiet",
		"--repository", "git.example/"+lineage, "--metadata-file", meta, ctxDir)
	c.Env = append(os.Environ(), "KILN_CACHE_DIR="+filepath.Join(dir, "cli-cache"))
	ms, _, err = benchkit.Time(c)
	if err != nil {
		return 0, "", 0, 0, err
	}
	m, err := readMeta(meta)
	if err != nil {
		return 0, "", 0, 0, err
	}
	return ms, m.ID, m.Steps, m.Cached, nil
}

// exported waits for build id's automatic cache export and returns its
// event with the build's finished event and record.
func (f *farm) exported(ctx context.Context, id string) (finished, export *kilnv1.BuildEvent, rec *kilnv1.Build, err error) {
	cc, err := grpc.NewClient(f.k.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, nil, err
	}
	defer cc.Close()
	bs := kilnv1.NewBuildServiceClient(cc)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		stream, err := bs.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id, NoFollow: true})
		if err != nil {
			return nil, nil, nil, err
		}
		finished, export = nil, nil
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, nil, nil, err
			}
			ev := resp.GetEvent()
			if ev.GetFinished() != nil {
				finished = ev
			}
			if c := ev.GetCache(); c != nil && c.GetKind() == kilnv1.CacheEvent_KIND_EXPORT && c.GetAutomatic() {
				export = ev
			}
		}
		if finished != nil && export != nil {
			if e := export.GetCache().GetError(); e != "" {
				return nil, nil, nil, fmt.Errorf("build %s: automatic cache export failed: %s", id, e)
			}
			got, err := bs.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: id})
			if err != nil {
				return nil, nil, nil, err
			}
			return finished, export, got.GetBuild(), nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, nil, fmt.Errorf("build %s: no automatic cache export: %w", id, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// measureKind runs the rounds on one engine kind: a warm farm, rebuilt;
// fresh farms with and without the registry; then the export's cost per
// mode.
func measureKind(ctx context.Context, k engineKind, binDir, dir, prefix, base string, runs int) ([]series, []exportCost, error) {
	warmURL, stopWarm, err := k.start(ctx, "cold-warm")
	if err != nil {
		return nil, nil, err
	}
	defer stopWarm()
	warm, err := startFarm(binDir, filepath.Join(dir, "warm"), "warm", warmURL, "--cache-registry", prefix)
	if err != nil {
		return nil, nil, err
	}
	defer warm.stop()
	ss := []series{{Kind: k.name, Path: "warm engine (rebuild where the lineage built)"},
		{Kind: k.name, Path: "fresh engine, automatic warm start"},
		{Kind: k.name, Path: "fresh engine, no cache registry"}}
	for i := range runs {
		lineage := fmt.Sprintf("cold-%d-%d", i, time.Now().UnixNano()%1e6)
		// Revision 0 makes the lineage; its export fills the registry.
		if _, id, _, _, err := warm.build(binDir, dir, base, lineage, 0); err != nil {
			return nil, nil, err
		} else if _, _, _, err := warm.exported(ctx, id); err != nil {
			return nil, nil, err
		}
		ms, id, steps, cached, err := warm.build(binDir, dir, base, lineage, 1)
		if err != nil {
			return nil, nil, err
		}
		ss[0].WallMS, ss[0].CachedSteps, ss[0].Steps = append(ss[0].WallMS, ms), append(ss[0].CachedSteps, cached), steps
		if _, _, _, err := warm.exported(ctx, id); err != nil { // the registry holds revision 1
			return nil, nil, err
		}
		order := []int{1, 2}
		if i%2 == 1 {
			order = []int{2, 1}
		}
		for _, which := range order {
			url, stop, err := k.start(ctx, fmt.Sprintf("cold-%d-%d", i, which))
			if err != nil {
				return nil, nil, err
			}
			var extra []string
			if which == 1 {
				extra = []string{"--cache-registry", prefix}
			}
			f, err := startFarm(binDir, filepath.Join(dir, fmt.Sprintf("cold-%d-%d", i, which)), "cold", url, extra...)
			if err != nil {
				stop()
				return nil, nil, err
			}
			ms, _, steps, cached, err := f.build(binDir, dir, base, lineage, 2)
			f.stop()
			stop()
			if err != nil {
				return nil, nil, err
			}
			ss[which].WallMS, ss[which].CachedSteps, ss[which].Steps = append(ss[which].WallMS, ms), append(ss[which].CachedSteps, cached), steps
		}
	}
	for i := range ss {
		ss[i].MedianMS = benchkit.Median(ss[i].WallMS)
	}
	warm.stop()

	var costs []exportCost
	for _, mode := range k.modes {
		extra := []string{"--cache-registry", prefix}
		if mode != "inline" {
			extra = append(extra, "--warm-cache-mode", mode)
		}
		f, err := startFarm(binDir, filepath.Join(dir, "export-"+mode), "warm", warmURL, extra...)
		if err != nil {
			return nil, nil, err
		}
		c := exportCost{Kind: k.name, Mode: mode, Excluded: true}
		lineage := fmt.Sprintf("export-%s-%d", mode, time.Now().UnixNano()%1e6)
		for rev := range runs {
			_, id, _, _, err := f.build(binDir, dir, base, lineage, rev)
			if err != nil {
				f.stop()
				return nil, nil, err
			}
			fin, exp, rec, err := f.exported(ctx, id)
			if err != nil {
				f.stop()
				return nil, nil, err
			}
			took := exp.GetCache().GetDuration().AsDuration()
			c.AfterFinishMS = append(c.AfterFinishMS, millis(exp.GetTime().AsTime().Sub(fin.GetTime().AsTime())))
			c.ExportMS = append(c.ExportMS, millis(took))
			c.BuildMS = append(c.BuildMS, millis(rec.GetFinishedAt().AsTime().Sub(rec.GetStartedAt().AsTime())))
			if exp.GetTime().AsTime().Add(-took).Before(rec.GetFinishedAt().AsTime()) {
				c.Excluded = false
			}
		}
		f.stop()
		c.MedianMS = benchkit.Median(c.AfterFinishMS)
		costs = append(costs, c)
	}
	return ss, costs, nil
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
