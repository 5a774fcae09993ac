// Command warmrebuild measures kiln's own overhead: a warm rebuild of an
// unchanged small context through kilnd (the kiln CLI end to end) against
// `docker build` of the same context directly on the same engine, with the
// same (classic) builder, alternating, and prints medians and their ratio
// as a table and as JSON (also written to bench/results/warmrebuild.json).
//
// Run it with `make bench` (which starts the engine and registry and
// builds bin/).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

type report struct {
	Benchmark    string    `json:"benchmark"`
	Engine       string    `json:"engine"`
	Runs         int       `json:"runs"`
	KilnMedian   float64   `json:"kiln_median_ms"`
	DockerMedian float64   `json:"docker_median_ms"`
	Ratio        float64   `json:"ratio"`
	OverheadMS   float64   `json:"kiln_overhead_ms"`
	Target       float64   `json:"target_ratio"`
	KilnMS       []float64 `json:"kiln_ms"`
	DockerMS     []float64 `json:"docker_ms"`
}

func main() {
	runs := flag.Int("runs", 15, "timed runs of each (after one warm-up each)")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image (scripts/dev-env.sh base makes it)")
	out := flag.String("out", "bench/results/warmrebuild.json", "where to write the JSON report")
	flag.Parse()
	if err := run(*runs, *binDir, *base, *out); err != nil {
		fmt.Fprintln(os.Stderr, "warmrebuild:", err)
		os.Exit(1)
	}
}

func run(runs int, binDir, base, out string) error {
	tmp, err := os.MkdirTemp("", "kiln-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctxDir, err := benchkit.WarmContext(tmp, base, "")
	if err != nil {
		return err
	}
	k, err := benchkit.StartKilnd(binDir, tmp)
	if err != nil {
		return err
	}
	defer k.Stop()

	kilnCmd := func() *exec.Cmd {
		return k.KilnBuild(binDir, filepath.Join(tmp, "cli-cache"), "kiln-bench/warm:kiln", ctxDir)
	}
	dockerCmd := func() *exec.Cmd { return benchkit.DockerBuild("kiln-bench/warm:docker", ctxDir) }
	// Warm both paths (engine cache, kilnd's connections).
	for _, c := range []*exec.Cmd{kilnCmd(), dockerCmd()} {
		if _, _, err := benchkit.Time(c); err != nil {
			return err
		}
	}
	r := report{Benchmark: "warm rebuild of an unchanged small context", Engine: benchkit.EngineVersion(), Runs: runs, Target: 1.5}
	for i := 0; i < runs; i++ {
		kt, _, err := benchkit.Time(kilnCmd())
		if err != nil {
			return err
		}
		dt, _, err := benchkit.Time(dockerCmd())
		if err != nil {
			return err
		}
		r.KilnMS = append(r.KilnMS, kt)
		r.DockerMS = append(r.DockerMS, dt)
	}
	r.KilnMedian, r.DockerMedian = benchkit.Median(r.KilnMS), benchkit.Median(r.DockerMS)
	r.Ratio = r.KilnMedian / r.DockerMedian
	r.OverheadMS = r.KilnMedian - r.DockerMedian
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, %d alternating runs each)", r.Benchmark, r.Engine, runs),
		[]string{"path", "median ms"},
		[]benchkit.Row{
			{Name: "kiln build via kilnd (CLI → farm)", Values: []string{fmt.Sprintf("%.1f", r.KilnMedian)}},
			{Name: "docker build (classic, same engine)", Values: []string{fmt.Sprintf("%.1f", r.DockerMedian)}},
		},
		fmt.Sprintf("ratio kiln/docker = %.2f (target ≤ %.1f); kiln overhead = %.1f ms", r.Ratio, r.Target, r.OverheadMS),
		r, out)
}
