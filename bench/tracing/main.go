// Command tracing measures what tracing costs a build: a warm rebuild of
// an unchanged small context through kilnd and the kiln CLI with OTLP
// export on (kilnd and the CLI exporting every span to an in-process
// OTLP/gRPC receiver) against the same with export off (no
// OTEL_EXPORTER_OTLP_ENDPOINT: no exporter, propagation only). Two kilnds
// share the engine, one per setting; runs alternate between them, the
// order flipping every round, and the report gives the medians and the
// overhead in percent (target ≤ 3 %) as a table and as JSON (also written
// to bench/results/tracing.json).
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
	"strings"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

type report struct {
	Benchmark     string    `json:"benchmark"`
	Engine        string    `json:"engine"`
	Runs          int       `json:"runs"`
	OnMedian      float64   `json:"tracing_on_median_ms"`
	OffMedian     float64   `json:"tracing_off_median_ms"`
	OverheadPct   float64   `json:"overhead_pct"`
	TargetPct     float64   `json:"target_overhead_pct"`
	SpansReceived int64     `json:"spans_received"`
	SpansPerBuild float64   `json:"spans_per_build"`
	OnMS          []float64 `json:"tracing_on_ms"`
	OffMS         []float64 `json:"tracing_off_ms"`
	// CLIOnly is the CLI exporting against the untraced kilnd: the part
	// of the overhead the CLI's own export (flushed before it exits) makes.
	CLIOnlyMedian float64   `json:"cli_only_median_ms"`
	CLIOnlyMS     []float64 `json:"cli_only_ms"`
}

func main() {
	runs := flag.Int("runs", 61, "timed runs of each setting (after one warm-up each); fewer scatter by several percent on a busy machine")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image (scripts/dev-env.sh base makes it)")
	out := flag.String("out", "bench/results/tracing.json", "where to write the JSON report")
	flag.Parse()
	if err := run(*runs, *binDir, *base, *out); err != nil {
		fmt.Fprintln(os.Stderr, "tracing:", err)
		os.Exit(1)
	}
}

// otelVars are the variables whose presence turns export on, cleared for
// the untraced kilnd and CLI whatever the caller's environment holds.
var otelVars = []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "TRACEPARENT", "TRACESTATE"}

func run(runs int, binDir, base, out string) error {
	tmp, err := os.MkdirTemp("", "kiln-bench-tracing-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctxDir, err := benchkit.WarmContext(tmp, base, ", traced or not")
	if err != nil {
		return err
	}
	recv, err := startReceiver()
	if err != nil {
		return err
	}
	defer recv.stop()
	traceEnv := []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + recv.addr, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
	}

	// kilnd inherits this process's environment: set it for each start.
	for _, v := range otelVars {
		os.Unsetenv(v)
	}
	off, err := benchkit.StartKilnd(binDir, filepath.Join(tmp, "off"), "--name", "bench-off")
	if err != nil {
		return err
	}
	defer off.Stop()
	for _, kv := range traceEnv {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	on, err := benchkit.StartKilnd(binDir, filepath.Join(tmp, "on"), "--name", "bench-on")
	for _, v := range otelVars {
		os.Unsetenv(v)
	}
	if err != nil {
		return err
	}
	defer on.Stop()

	onCmd := func() *exec.Cmd {
		c := on.KilnBuild(binDir, filepath.Join(tmp, "cli-cache-on"), "kiln-bench/tracing:on", ctxDir)
		c.Env = append(c.Env, traceEnv...)
		return c
	}
	offCmd := func() *exec.Cmd {
		return off.KilnBuild(binDir, filepath.Join(tmp, "cli-cache-off"), "kiln-bench/tracing:off", ctxDir)
	}
	cliOnlyCmd := func() *exec.Cmd {
		c := offCmd()
		c.Env = append(c.Env, traceEnv...)
		return c
	}
	for _, c := range []*exec.Cmd{onCmd(), offCmd(), cliOnlyCmd()} { // warm both kilnds, the engine's cache and the CLI caches
		if _, _, err := benchkit.Time(c); err != nil {
			return err
		}
	}
	before := recv.spans.Load()
	r := report{Benchmark: "tracing overhead on a warm rebuild of an unchanged small context", Engine: benchkit.EngineVersion(), Runs: runs, TargetPct: 3}
	settings := []struct {
		cmd func() *exec.Cmd
		ms  *[]float64
	}{{onCmd, &r.OnMS}, {offCmd, &r.OffMS}, {cliOnlyCmd, &r.CLIOnlyMS}}
	for i := 0; i < runs; i++ {
		for j := range settings { // rotate the order every round
			s := settings[(i+j)%len(settings)]
			ms, _, err := benchkit.Time(s.cmd())
			if err != nil {
				return err
			}
			*s.ms = append(*s.ms, ms)
		}
	}
	r.OnMedian, r.OffMedian = benchkit.Median(r.OnMS), benchkit.Median(r.OffMS)
	r.CLIOnlyMedian = benchkit.Median(r.CLIOnlyMS)
	r.OverheadPct = (r.OnMedian - r.OffMedian) / r.OffMedian * 100
	r.SpansReceived = recv.spans.Load() - before // kilnd exports in batches: a few of the last build's may be missing
	r.SpansPerBuild = float64(r.SpansReceived) / float64(runs)
	if r.SpansReceived == 0 {
		return fmt.Errorf("the receiver got no spans: tracing was not on")
	}
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, %d alternating runs each)", r.Benchmark, r.Engine, runs),
		[]string{"tracing", "median ms"},
		[]benchkit.Row{
			{Name: "on (kilnd and CLI export OTLP to a local receiver)", Values: []string{fmt.Sprintf("%.1f", r.OnMedian)}},
			{Name: "off (no OTEL_EXPORTER_OTLP_ENDPOINT)", Values: []string{fmt.Sprintf("%.1f", r.OffMedian)}},
			{Name: "CLI only (the CLI exports, kilnd does not)", Values: []string{fmt.Sprintf("%.1f", r.CLIOnlyMedian)}},
		},
		fmt.Sprintf("tracing overhead = %+.1f %% (target ≤ %.0f %%); %.1f spans per build exported", r.OverheadPct, r.TargetPct, r.SpansPerBuild),
		r, out)
}
