// Command engines measures kiln on each engine kind side by side: Docker's
// BuildKit (the dev-env dockerd), a standalone buildkitd run as root and a
// rootless one (both started fresh by scripts/buildkitd.sh), each built on
// through kilnd (the kiln CLI end to end, the agent driving that engine)
// and driven directly (`docker build` + `docker push` on Docker;
// `buildctl build` pushing on buildkitd), alternating, in one run. Two
// rebuilds, every one pushing its image to the dev registry:
//
//   - warm: an unchanged small context, every step a cache hit;
//   - big: a context of -big-mb MB (files of 8 MB under big/) in which one
//     small file (app/stamp.txt) changes before every build; the Dockerfile
//     copies big/ and app/ in separate steps, so only the small COPY runs
//     again and the time is the context's way to the engine.
//
// It prints medians and kiln ÷ direct per engine (target ≤ 1.1) as a table
// and as JSON (also written to bench/results/engines.json). kilnd drives a
// buildkitd through --engine; a kilnd without that flag gets "n/a" in the
// kiln column for the buildkitd engines.
//
// Run it with `make bench` (which starts the engine and registry and
// builds bin/); it runs as root (a rootless buildkitd's user is made by
// scripts/buildkitd.sh).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

// target is the ratio kiln ÷ direct the issue asks for on every engine.
const target = 1.1

type series struct {
	Scenario     string    `json:"scenario"`
	Engine       string    `json:"engine"`
	Direct       string    `json:"direct"`
	KilnMedian   float64   `json:"kiln_median_ms,omitempty"`
	DirectMedian float64   `json:"direct_median_ms"`
	Ratio        float64   `json:"kiln_over_direct,omitempty"`
	OverheadMS   float64   `json:"kiln_minus_direct_ms,omitempty"`
	KilnMS       []float64 `json:"kiln_ms,omitempty"`
	DirectMS     []float64 `json:"direct_ms"`
	KilnNote     string    `json:"kiln_note,omitempty"`
}

type report struct {
	Benchmark     string   `json:"benchmark"`
	DockerEngine  string   `json:"docker_engine"`
	BuildKit      string   `json:"buildkitd"`
	Runs          int      `json:"runs"`
	BigMB         int      `json:"big_context_mb"`
	Target        float64  `json:"target_kiln_over_direct"`
	CPUPressureMS int64    `json:"cpu_pressure_ms"`
	Series        []series `json:"series"`
}

// engineUnderTest is one engine with its two ways in.
type engineUnderTest struct {
	name   string
	direct string // how it is driven directly, for the report
	// build returns the direct command building ctxDir and pushing ref.
	build func(ref, ctxDir string) []*exec.Cmd
	// kilnArgs are kilnd's extra flags to drive it; nil: kilnd cannot.
	kilnArgs []string
	kilnNote string
}

func main() {
	runs := flag.Int("runs", 7, "timed runs of each path per scenario and engine (after one warm-up each)")
	bigMB := flag.Int("big-mb", 200, "size of the big context in MB")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image (scripts/dev-env.sh base makes it)")
	registry := flag.String("registry", "127.0.0.1:5000", "registry every build pushes to")
	only := flag.String("engines", "docker,buildkitd,buildkitd-rootless", "engines to measure, comma-separated")
	out := flag.String("out", "bench/results/engines.json", "where to write the JSON report")
	flag.Parse()
	if err := run(*runs, *bigMB, *binDir, *base, *registry, strings.Split(*only, ","), *out); err != nil {
		fmt.Fprintln(os.Stderr, "engines:", err)
		os.Exit(1)
	}
}

func run(runs, bigMB int, binDir, base, registry string, only []string, out string) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "kiln-bench-engines-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	warmDir, err := benchkit.WarmContext(filepath.Join(tmp, "warm"), base, " (engines)")
	if err != nil {
		return err
	}
	bigDir := filepath.Join(tmp, "big", "context")
	if err := writeBigContext(bigDir, base, bigMB); err != nil {
		return err
	}
	bkBin, err := enginetest.BuildKitBin(ctx)
	if err != nil {
		return err
	}
	buildctl := filepath.Join(bkBin, "buildctl")
	engineFlag, err := kilndHasEngineFlag(binDir)
	if err != nil {
		return err
	}

	var engines []engineUnderTest
	for _, name := range only {
		switch name {
		case "docker":
			engines = append(engines, engineUnderTest{
				name:   "docker",
				direct: "docker build (BuildKit) + docker push",
				build: func(ref, ctxDir string) []*exec.Cmd {
					b := exec.Command(benchkit.Docker(), "build", "-q", "-t", ref, ctxDir)
					b.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
					return []*exec.Cmd{b, exec.Command(benchkit.Docker(), "push", "-q", ref)}
				},
				kilnArgs: []string{},
			})
		case "buildkitd", "buildkitd-rootless":
			bk, err := enginetest.LaunchBuildKitd(ctx, enginetest.BuildKitdOptions{Rootless: name == "buildkitd-rootless"})
			if err != nil {
				return err
			}
			defer bk.Stop()
			e := engineUnderTest{
				name:   name,
				direct: "buildctl build (push=true)",
				build: func(ref, ctxDir string) []*exec.Cmd {
					return []*exec.Cmd{exec.Command(buildctl, "--addr", bk.Addr, "build", "--frontend", "dockerfile.v0",
						"--local", "context="+ctxDir, "--local", "dockerfile="+ctxDir,
						"--output", "type=image,name="+ref+",push=true")}
				},
			}
			if engineFlag {
				e.kilnArgs = []string{"--engine", bk.Addr}
			} else {
				e.kilnNote = "kilnd has no --engine flag"
			}
			engines = append(engines, e)
		default:
			return fmt.Errorf("unknown engine %q (docker, buildkitd, buildkitd-rootless)", name)
		}
	}

	r := report{
		Benchmark:    "rebuilds on each engine kind, through kiln and direct",
		DockerEngine: benchkit.EngineVersion(),
		BuildKit:     filepath.Base(bkBin),
		Runs:         runs,
		BigMB:        bigMB,
		Target:       target,
	}
	pressure := benchkit.CPUPressure()
	for _, e := range engines {
		var k *benchkit.Kilnd
		if e.kilnArgs != nil {
			dir := filepath.Join(tmp, "kilnd-"+e.name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			args := append([]string{"--name", "bench-" + e.name}, e.kilnArgs...)
			if k, err = benchkit.StartKilnd(binDir, dir, args...); err != nil {
				return fmt.Errorf("kilnd on %s: %w", e.name, err)
			}
		}
		for _, sc := range []struct {
			name, dir string
			touch     bool
		}{
			{"warm rebuild, unchanged small context", warmDir, false},
			{fmt.Sprintf("rebuild, %d MB context, one small file changed", bigMB), bigDir, true},
		} {
			s, err := measure(e, k, binDir, tmp, registry, sc.dir, sc.touch, runs)
			if err != nil {
				if k != nil {
					k.Stop()
				}
				return fmt.Errorf("%s on %s: %w", sc.name, e.name, err)
			}
			s.Scenario = sc.name
			r.Series = append(r.Series, s)
		}
		if k != nil {
			k.Stop()
		}
	}
	if pressure >= 0 {
		r.CPUPressureMS = (benchkit.CPUPressure() - pressure) / 1000
	}

	var rows []benchkit.Row
	var summary []string
	for _, s := range r.Series {
		kiln, ratio, overhead := "n/a", "n/a", "n/a"
		if s.KilnNote == "" {
			kiln, ratio, overhead = fmt.Sprintf("%.0f", s.KilnMedian), fmt.Sprintf("%.2f", s.Ratio), fmt.Sprintf("%+.0f", s.OverheadMS)
			if s.Ratio > target {
				summary = append(summary, fmt.Sprintf("%s / %s: %.2f > %.1f", s.Engine, s.Scenario, s.Ratio, target))
			}
		}
		rows = append(rows, benchkit.Row{Name: s.Scenario, Values: []string{s.Engine, kiln, fmt.Sprintf("%.0f", s.DirectMedian), s.Direct, ratio, overhead}})
	}
	verdict := fmt.Sprintf("every kiln ÷ direct ≤ %.1f", target)
	if len(summary) > 0 {
		verdict = "over the target: " + strings.Join(summary, "; ")
	}
	return benchkit.Report(
		fmt.Sprintf("%s (Docker %s, %s, %d alternating runs each, CPU pressure %d ms)", r.Benchmark, r.DockerEngine, r.BuildKit, runs, r.CPUPressureMS),
		[]string{"scenario", "engine", "kiln median ms", "direct median ms", "direct", "kiln ÷ direct", "kiln − direct ms"},
		rows, verdict, r, out)
}

// measure times kiln (when k is set) and the direct path alternating, each
// after one warm-up; with touch, app/stamp.txt in ctxDir gets new content
// before every build.
func measure(e engineUnderTest, k *benchkit.Kilnd, binDir, tmp, registry, ctxDir string, touch bool, runs int) (series, error) {
	s := series{Engine: e.name, Direct: e.direct, KilnNote: e.kilnNote}
	repo := registry + "/kiln-bench/engines-" + e.name
	cliCache := filepath.Join(tmp, "cli-cache-"+e.name)
	kilnOnce := func() (float64, error) {
		if touch {
			if err := stamp(ctxDir); err != nil {
				return 0, err
			}
		}
		c := k.KilnBuild(binDir, cliCache, repo+":kiln", ctxDir)
		c.Args = append(c.Args[:len(c.Args)-1], "--builder", "buildkit", "--push", ctxDir)
		ms, _, err := benchkit.Time(c)
		return ms, err
	}
	directOnce := func() (float64, error) {
		if touch {
			if err := stamp(ctxDir); err != nil {
				return 0, err
			}
		}
		var total float64
		for _, c := range e.build(repo+":direct", ctxDir) {
			ms, _, err := benchkit.Time(c)
			if err != nil {
				return 0, err
			}
			total += ms
		}
		return total, nil
	}
	for i := 0; i <= runs; i++ {
		if k != nil {
			ms, err := kilnOnce()
			if err != nil {
				return s, err
			}
			if i > 0 {
				s.KilnMS = append(s.KilnMS, ms)
			}
		}
		ms, err := directOnce()
		if err != nil {
			return s, err
		}
		if i > 0 {
			s.DirectMS = append(s.DirectMS, ms)
		}
	}
	s.DirectMedian = benchkit.Median(s.DirectMS)
	if k != nil {
		s.KilnMedian = benchkit.Median(s.KilnMS)
		s.Ratio = s.KilnMedian / s.DirectMedian
		s.OverheadMS = s.KilnMedian - s.DirectMedian
	}
	return s, nil
}

// writeBigContext writes a context of mb MB of random data in 8 MB files
// under dir/big, app/stamp.txt and a Dockerfile copying them in two steps.
func writeBigContext(dir, base string, mb int) error {
	if err := os.MkdirAll(filepath.Join(dir, "big"), 0o755); err != nil {
		return err
	}
	for i := 0; mb > 0; i++ {
		n := min(mb, 8)
		mb -= n
		f, err := os.Create(filepath.Join(dir, "big", fmt.Sprintf("blob%03d.bin", i)))
		if err != nil {
			return err
		}
		_, err = io.CopyN(f, rand.Reader, int64(n)<<20)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
		return err
	}
	if err := stamp(dir); err != nil {
		return err
	}
	df := "FROM " + base + "\nCOPY big /big\nCOPY app /app\nCMD [\"cat\", \"/app/stamp.txt\"]\n"
	return os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644)
}

// stamp gives app/stamp.txt in dir new content.
func stamp(dir string) error {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	body := fmt.Sprintf("%s %s\n", time.Now().Format(time.RFC3339Nano), hex.EncodeToString(b))
	return os.WriteFile(filepath.Join(dir, "app", "stamp.txt"), []byte(body), 0o644)
}

// kilndHasEngineFlag says whether binDir/kilnd takes --engine.
func kilndHasEngineFlag(binDir string) (bool, error) {
	out, _ := exec.Command(filepath.Join(binDir, "kilnd"), "--help").CombinedOutput()
	if !strings.Contains(string(out), "-listen") {
		return false, fmt.Errorf("%s --help printed no flags:\n%s", filepath.Join(binDir, "kilnd"), out)
	}
	return strings.Contains(string(out), "\n  -engine "), nil
}
