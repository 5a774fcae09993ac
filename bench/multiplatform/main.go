// Command multiplatform measures what a farm gains from multi-platform
// builds: one `kiln build --platform linux/amd64,linux/arm64 --push` whose
// two children run in parallel on two agents, against the same two
// platforms built one after the other (two single-platform builds) — what a
// single builder does. It prints the medians and parallel ÷ sequential
// (target ≤ 0.6) as a table and as JSON (also written to
// bench/results/multiplatform.json).
//
// Two workloads, every build with --no-cache so each one runs its step:
//
//   - fixed: a step that takes the same time on every platform (-step,
//     sleeping), as on a farm whose agents build each platform natively;
//     this is the one the target is for;
//   - cpu: a busy loop, which on this machine runs arm64 under
//     qemu-user-static: the emulated platform dominates, and parallelism
//     saves only the native platform's share.
//
// The farm is a gateway, a scheduler and two agents (one slot each, on the
// default engine) on an in-process NATS server; the base image (busybox
// for both platforms, from Debian's busybox-static packages) is built by
// the farm first. Needs `make dev-env` (engine, registry, qemu-user-static)
// and `make build` (bin/). Run: go run ./bench/multiplatform [-runs N].
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	"github.com/kilnbuild/kiln/services/bus"
)

// target is the ratio parallel ÷ sequential the issue asks for.
const target = 0.6

type series struct {
	Workload     string    `json:"workload"`
	ParallelMS   []float64 `json:"parallel_ms"`
	SequentialMS []float64 `json:"sequential_ms"`
	Parallel     float64   `json:"parallel_median_ms"`
	Sequential   float64   `json:"sequential_median_ms"`
	Ratio        float64   `json:"parallel_over_sequential"`
}

type report struct {
	Benchmark string   `json:"benchmark"`
	Engine    string   `json:"engine"`
	Agents    int      `json:"agents"`
	Runs      int      `json:"runs"`
	Step      string   `json:"fixed_step"`
	Target    float64  `json:"target"`
	Series    []series `json:"series"`
}

func main() {
	runs := flag.Int("runs", 3, "timed runs of each build")
	step := flag.Duration("step", 5*time.Second, "how long the fixed workload's step takes")
	loops := flag.Int("loops", 300000, "the cpu workload's busy-loop iterations")
	bin := flag.String("bin", "bin", "directory with kiln, kiln-gateway, kiln-scheduler and kiln-agent")
	debs := flag.String("debs", "/var/cache/kiln-dev/debs", "where Debian's busybox-static packages are kept")
	out := flag.String("out", "bench/results/multiplatform.json", "JSON report")
	flag.Parse()
	if err := run(*runs, *step, *loops, *bin, *debs, *out); err != nil {
		fmt.Fprintln(os.Stderr, "multiplatform:", err)
		os.Exit(1)
	}
}

func run(runs int, step time.Duration, loops int, bin, debs, out string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "kiln-bench-multiplatform-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := startFarm(ctx, bin, dir)
	if err != nil {
		return err
	}
	defer f.stop()

	base, err := f.buildBase(debs, filepath.Join(dir, "base"))
	if err != nil {
		return err
	}
	workloads := []struct{ name, run string }{
		{"fixed", fmt.Sprintf("sleep %d", int(step.Seconds()))},
		{"cpu", fmt.Sprintf("i=0; while [ $i -lt %d ]; do i=$((i+1)); done", loops)},
	}
	rep := report{Benchmark: "multiplatform", Engine: benchkit.EngineVersion(), Agents: 2, Runs: runs, Step: step.String(), Target: target}
	var rows []benchkit.Row
	for _, w := range workloads {
		ctxDir := filepath.Join(dir, w.name)
		if err := os.MkdirAll(ctxDir, 0o755); err != nil {
			return err
		}
		df := "FROM " + base + "\nARG TARGETARCH\nRUN " + w.run + "; echo $TARGETARCH > /arch\n"
		if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df), 0o644); err != nil {
			return err
		}
		tag := "127.0.0.1:5000/kiln-bench/multiplatform-" + w.name + ":1"
		s := series{Workload: w.name}
		// One untimed round: the context reaches the farm's store.
		if _, err := f.build(ctxDir, tag, "linux/amd64,linux/arm64"); err != nil {
			return err
		}
		for i := 0; i < runs; i++ { // alternating, so drift hits both alike
			ms, err := f.build(ctxDir, tag, "linux/amd64,linux/arm64")
			if err != nil {
				return err
			}
			s.ParallelMS = append(s.ParallelMS, ms)
			var seq float64
			for _, p := range []string{"linux/amd64", "linux/arm64"} {
				ms, err := f.build(ctxDir, tag+"-"+strings.ReplaceAll(p, "/", "-"), p)
				if err != nil {
					return err
				}
				seq += ms
			}
			s.SequentialMS = append(s.SequentialMS, seq)
		}
		s.Parallel, s.Sequential = benchkit.Median(s.ParallelMS), benchkit.Median(s.SequentialMS)
		s.Ratio = s.Parallel / s.Sequential
		rep.Series = append(rep.Series, s)
		rows = append(rows, benchkit.Row{Name: w.name, Values: []string{
			fmt.Sprintf("%.0f", s.Parallel), fmt.Sprintf("%.0f", s.Sequential), fmt.Sprintf("%.2f", s.Ratio)}})
	}
	summary := fmt.Sprintf("parallel ÷ sequential, fixed workload: %.2f (target ≤ %.1f); cpu workload (arm64 emulated): %.2f", rep.Series[0].Ratio, target, rep.Series[1].Ratio)
	return benchkit.Report("Multi-platform build: two platforms on two agents vs one after the other (ms, median)",
		[]string{"workload", "parallel (2 agents)", "sequential (1 at a time)", "ratio"}, rows, summary, rep, out)
}

// farm is the processes of a two-agent farm.
type farm struct {
	bin, gateway string
	procs        []*exec.Cmd
	stopNATS     func()
}

func startFarm(ctx context.Context, bin, dir string) (*farm, error) {
	agents := []string{"mp-a", "mp-b"}
	seeds, err := bus.LoadOrCreateSeeds(filepath.Join(dir, "seeds"), agents...)
	if err != nil {
		return nil, err
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats"), Identities: seeds.Identities})
	if err != nil {
		return nil, err
	}
	f := &farm{bin: bin, stopNATS: func() { ns.Shutdown(); ns.WaitForShutdown() }}
	env := append(os.Environ(), "KILN_NATS_URL="+ns.ClientURL())
	start := func(name string, args ...string) (map[string]string, error) {
		ready := filepath.Join(dir, name+".ready")
		cmd := exec.CommandContext(ctx, filepath.Join(bin, args[0]), append(args[1:], "--ready-file", ready, "--log-level", "warn")...)
		cmd.Env, cmd.Stderr = env, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		f.procs = append(f.procs, cmd)
		addrs := map[string]string{}
		deadline := time.Now().Add(time.Minute)
		for {
			data, err := os.ReadFile(ready)
			if err == nil && json.Unmarshal(data, &addrs) == nil {
				return addrs, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s not ready after a minute", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	gw, err := start("gateway", "kiln-gateway", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--nats-nkey-file", seeds.File(bus.RoleGateway, ""))
	if err != nil {
		f.stop()
		return nil, err
	}
	f.gateway = gw["grpc"]
	if _, err := start("scheduler", "kiln-scheduler", "--http-listen", "127.0.0.1:0", "--nats-nkey-file", seeds.File(bus.RoleScheduler, "")); err != nil {
		f.stop()
		return nil, err
	}
	for _, a := range agents {
		if _, err := start(a, "kiln-agent", "--name", a, "--slots", "1", "--http-listen", "127.0.0.1:0",
			"--blob-cache-dir", filepath.Join(dir, a+"-blobs"), "--nats-nkey-file", seeds.File(bus.RoleAgent, a)); err != nil {
			f.stop()
			return nil, err
		}
	}
	return f, f.waitAgents(len(agents))
}

// waitAgents waits until the farm lists n ready agents.
func (f *farm) waitAgents(n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := exec.Command(filepath.Join(f.bin, "kiln"), "agents", "--gateway", f.gateway, "--format", "json").Output()
		if strings.Count(string(out), "AGENT_STATE_READY") >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d agents not ready after a minute: %s", n, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *farm) stop() {
	for i := len(f.procs) - 1; i >= 0; i-- {
		_ = f.procs[i].Process.Signal(syscall.SIGTERM)
		_ = f.procs[i].Wait()
	}
	f.stopNATS()
}

// build times one `kiln build --no-cache --push` of ctxDir for platforms.
func (f *farm) build(ctxDir, tag, platforms string) (float64, error) {
	c := exec.Command(filepath.Join(f.bin, "kiln"), "build", "--gateway", f.gateway, "--progress", "quiet", "--no-cache",
		"--platform", platforms, "-t", tag, "--push", ctxDir)
	ms, _, err := benchkit.Time(c)
	return ms, err
}

// buildBase builds the two-platform busybox base through the farm.
func (f *farm) buildBase(debs, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, arch := range []string{"amd64", "arm64"} {
		m, _ := filepath.Glob(filepath.Join(debs, "busybox-static_*_"+arch+".deb"))
		if len(m) == 0 {
			return "", fmt.Errorf("no busybox-static %s package in %s: dpkg --add-architecture %s; apt-get update; cd %s && apt-get download busybox-static:%s", arch, debs, arch, debs, arch)
		}
		x := filepath.Join(dir, "x-"+arch)
		if out, err := exec.Command("dpkg-deb", "-x", m[0], x).CombinedOutput(); err != nil {
			return "", fmt.Errorf("unpack %s: %v\n%s", m[0], err, out)
		}
		if err := os.Rename(filepath.Join(x, "bin", "busybox"), filepath.Join(dir, "busybox-"+arch)); err != nil {
			return "", err
		}
		if err := os.RemoveAll(x); err != nil {
			return "", err
		}
	}
	df := "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\nSHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nRUN /bin/busybox --install -s /bin\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return "", err
	}
	ref := "127.0.0.1:5000/kiln-bench/multiplatform-base:1"
	if _, err := f.build(dir, ref, "linux/amd64,linux/arm64"); err != nil {
		return "", err
	}
	return ref, nil
}
