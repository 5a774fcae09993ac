// Command contextupload measures incremental context transfer: a 200 MB
// context with one small file changed between builds, warm engine cache,
// built through kilnd (the kiln CLI end to end; its agent builds in
// BuildKit mode) and with `docker build` directly on the same engine, both
// with BuildKit (DOCKER_BUILDKIT=1: file sync of the context) and with the
// classic builder (a full context tar), alternating. It reports the bytes
// each sent per build (kiln: manifest + uploaded blobs, from the gateway's
// counters; classic docker: the context tar its CLI streams to the engine)
// and wall times.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

type report struct {
	Benchmark         string    `json:"benchmark"`
	Engine            string    `json:"engine"`
	Runs              int       `json:"runs"`
	ContextBytes      int64     `json:"context_bytes"`
	KilnBytesMedian   float64   `json:"kiln_bytes_sent_median"`
	DockerBytes       int64     `json:"docker_bytes_sent"`
	BytesRatio        float64   `json:"docker_over_kiln_bytes"`
	KilnMedianMS      float64   `json:"kiln_median_ms"`
	DockerMedianMS    float64   `json:"docker_median_ms"`
	BuildKitMedianMS  float64   `json:"docker_buildkit_median_ms"`
	TimeRatio         float64   `json:"kiln_over_docker_time"`
	BuildKitRatio     float64   `json:"kiln_over_docker_buildkit_time"`
	TargetBuildKit    float64   `json:"target_kiln_over_docker_buildkit_time"`
	TargetClassic     float64   `json:"target_kiln_over_docker_classic_time"`
	TargetBytesRatio  float64   `json:"target_docker_over_kiln_bytes"`
	TargetTimeRatio   float64   `json:"target_kiln_over_docker_time"`
	KilnBytesPerBuild []float64 `json:"kiln_bytes_sent"`
	KilnMS            []float64 `json:"kiln_ms"`
	DockerMS          []float64 `json:"docker_ms"`
	BuildKitMS        []float64 `json:"docker_buildkit_ms"`
}

func main() {
	runs := flag.Int("runs", 6, "timed builds of each (after one warm-up each)")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image (scripts/dev-env.sh base makes it)")
	files := flag.Int("files", 200, "files of 1 MiB in the context")
	out := flag.String("out", "bench/results/contextupload", "JSON reports go to OUT-<scenario>.json")
	scenarios := flag.String("scenarios", "copy,run", `comma-separated: "copy" (the changed file is only copied into the image) and/or "run" (a RUN step after the COPY reads it, so every build also starts a container)`)
	flag.Parse()
	for _, sc := range strings.Split(*scenarios, ",") {
		if err := run(*runs, *files, *binDir, *base, sc, *out+"-"+sc+".json"); err != nil {
			fmt.Fprintln(os.Stderr, "contextupload:", err)
			os.Exit(1)
		}
	}
}

// tarSize is the size of the uncompressed tar docker's CLI sends for
// regular files of the given sizes (header + padded content each, two zero
// blocks at the end; directories one header each).
func tarSize(fileSizes []int64, dirs int) int64 {
	n := int64(1024 + 512*dirs)
	for _, s := range fileSizes {
		n += 512 + (s+511)/512*512
	}
	return n
}

func run(runs, nfiles int, binDir, base, scenario, out string) error {
	dockerfile := []byte("FROM " + base + "\nRUN echo expensive-but-cached > /cached\nCOPY data/ /data/\nCOPY small/ /small/\n")
	switch scenario {
	case "copy":
	case "run":
		dockerfile = append(dockerfile, "RUN wc -c /small/*\n"...)
	default:
		return fmt.Errorf("unknown scenario %q: want copy or run", scenario)
	}
	tmp, err := os.MkdirTemp("", "kiln-bench-ctx-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctxDir := filepath.Join(tmp, "context")
	var sizes []int64
	write := func(name string, data []byte) error {
		p := filepath.Join(ctxDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, data, 0o644)
	}
	if err := write("Dockerfile", dockerfile); err != nil {
		return err
	}
	sizes = append(sizes, int64(len(dockerfile)))
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for i := range nfiles {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if err := write(fmt.Sprintf("data/blob-%03d.bin", i), buf); err != nil {
			return err
		}
		sizes = append(sizes, int64(len(buf)))
	}
	change := func(i int) error { // the 1 KB file that changes between builds
		return write("small/changing.txt", []byte(fmt.Sprintf("%01024d", i)[:1024]))
	}
	if err := change(0); err != nil {
		return err
	}
	sizes = append(sizes, 1024)
	var total int64
	for _, s := range sizes {
		total += s
	}

	k, err := benchkit.StartKilnd(binDir, tmp)
	if err != nil {
		return err
	}
	defer k.Stop()
	kilnCmd := func() *exec.Cmd {
		return k.KilnBuild(binDir, filepath.Join(tmp, "cli-cache"), "kiln-bench/ctx:kiln", ctxDir)
	}
	dockerCmd := func() *exec.Cmd { return benchkit.DockerBuild("kiln-bench/ctx:docker", ctxDir) }
	buildkitCmd := func() *exec.Cmd {
		c := exec.Command(benchkit.Docker(), "build", "-q", "-t", "kiln-bench/ctx:docker-buildkit", ctxDir)
		c.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
		return c
	}
	sent := func() (float64, error) {
		a, err := k.Counter("kiln_context_upload_bytes_received_total")
		if err != nil {
			return 0, err
		}
		b, err := k.Counter("kiln_context_manifest_bytes_received_total")
		return a + b, err
	}
	// Warm-up: the farm and the engine have seen the context once.
	for _, c := range []*exec.Cmd{kilnCmd(), dockerCmd(), buildkitCmd()} {
		if _, _, err := benchkit.Time(c); err != nil {
			return err
		}
	}
	r := report{Benchmark: fmt.Sprintf("%d MiB context, one 1 KB file changed per build, warm engine cache, scenario %q", nfiles, scenario),
		Engine: benchkit.EngineVersion(), Runs: runs, ContextBytes: total, TargetBytesRatio: 100, TargetTimeRatio: 1.2,
		TargetBuildKit: 1.3, TargetClassic: 0.2,
		DockerBytes: tarSize(sizes, 2)}
	for i := 1; i <= runs; i++ {
		if err := change(2 * i); err != nil {
			return err
		}
		before, err := sent()
		if err != nil {
			return err
		}
		kt, _, err := benchkit.Time(kilnCmd())
		if err != nil {
			return err
		}
		after, err := sent()
		if err != nil {
			return err
		}
		r.KilnMS = append(r.KilnMS, kt)
		r.KilnBytesPerBuild = append(r.KilnBytesPerBuild, after-before)
		if err := change(2*i + 1); err != nil {
			return err
		}
		dt, _, err := benchkit.Time(dockerCmd())
		if err != nil {
			return err
		}
		r.DockerMS = append(r.DockerMS, dt)
		if err := change(2*i + 1000); err != nil {
			return err
		}
		bt, _, err := benchkit.Time(buildkitCmd())
		if err != nil {
			return err
		}
		r.BuildKitMS = append(r.BuildKitMS, bt)
	}
	r.KilnBytesMedian = benchkit.Median(r.KilnBytesPerBuild)
	r.BytesRatio = float64(r.DockerBytes) / r.KilnBytesMedian
	r.KilnMedianMS, r.DockerMedianMS = benchkit.Median(r.KilnMS), benchkit.Median(r.DockerMS)
	r.BuildKitMedianMS = benchkit.Median(r.BuildKitMS)
	r.TimeRatio = r.KilnMedianMS / r.DockerMedianMS
	r.BuildKitRatio = r.KilnMedianMS / r.BuildKitMedianMS
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, %d alternating builds each)", r.Benchmark, r.Engine, runs),
		[]string{"path", "bytes sent per build (median)", "median ms"},
		[]benchkit.Row{
			{Name: "kiln build via kilnd", Values: []string{fmt.Sprintf("%.0f", r.KilnBytesMedian), fmt.Sprintf("%.0f", r.KilnMedianMS)}},
			{Name: "docker build (classic, same engine)", Values: []string{fmt.Sprintf("%d", r.DockerBytes), fmt.Sprintf("%.0f", r.DockerMedianMS)}},
			{Name: "docker build (BuildKit, same engine)", Values: []string{"only changed files (file sync)", fmt.Sprintf("%.0f", r.BuildKitMedianMS)}},
		},
		fmt.Sprintf("docker (classic) sends %.0f× the bytes kiln sends (target ≥ %.0f×); wall time kiln/docker classic = %.2f (issue 3 target ≤ %.1f; issue 6 target ≤ %.1f), kiln/docker BuildKit = %.2f (target ≤ %.1f)",
			r.BytesRatio, r.TargetBytesRatio, r.TimeRatio, r.TargetTimeRatio, r.TargetClassic, r.BuildKitRatio, r.TargetBuildKit),
		r, out)
}
