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
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type report struct {
	Benchmark    string    `json:"benchmark"`
	Runs         int       `json:"runs"`
	KilnMedianMS float64   `json:"kiln_median_ms"`
	DockerMedian float64   `json:"docker_median_ms"`
	Ratio        float64   `json:"ratio"`
	OverheadMS   float64   `json:"kiln_overhead_ms"`
	Target       float64   `json:"target_ratio"`
	KilnMS       []float64 `json:"kiln_ms"`
	DockerMS     []float64 `json:"docker_ms"`
	Engine       string    `json:"engine"`
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
	if err := exec.Command("scripts/dev-env.sh", "base").Run(); err != nil {
		return fmt.Errorf("make base image: %w", err)
	}
	tmp, err := os.MkdirTemp("", "kiln-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctxDir := filepath.Join(tmp, "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo warm > /warm\nCOPY app.txt /app/app.txt\nENV MODE=bench\nCMD [\"cat\", \"/app/app.txt\"]\n",
		"app.txt":    "a tiny build context\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}

	ready := filepath.Join(tmp, "ready.json")
	kilnd := exec.Command(filepath.Join(binDir, "kilnd"), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0", "--data-dir", filepath.Join(tmp, "data"), "--ready-file", ready, "--log-level", "warn")
	kilnd.Stderr = os.Stderr
	if err := kilnd.Start(); err != nil {
		return err
	}
	defer func() { _ = kilnd.Process.Signal(syscall.SIGTERM); _ = kilnd.Wait() }()
	var addrs struct{ GRPC string }
	deadline := time.Now().Add(time.Minute)
	for {
		data, err := os.ReadFile(ready)
		if err == nil && json.Unmarshal(data, &addrs) == nil && addrs.GRPC != "" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kilnd not ready after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}

	docker := "docker"
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		docker = "/usr/bin/docker" // the client that matches Debian's engine
	}
	kilnCmd := func() *exec.Cmd {
		return exec.Command(filepath.Join(binDir, "kiln"), "build", "--gateway", addrs.GRPC, "--progress", "quiet", "-t", "kiln-bench/warm:kiln", ctxDir)
	}
	dockerCmd := func() *exec.Cmd {
		c := exec.Command(docker, "build", "-q", "-t", "kiln-bench/warm:docker", ctxDir)
		c.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
		return c
	}
	timeIt := func(c *exec.Cmd) (float64, error) {
		var buf bytes.Buffer
		c.Stdout, c.Stderr = &buf, &buf
		start := time.Now()
		if err := c.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w\n%s", strings.Join(c.Args, " "), err, buf.String())
		}
		return float64(time.Since(start).Microseconds()) / 1000, nil
	}
	// Warm both paths (engine cache, kilnd's connections).
	for _, c := range []*exec.Cmd{kilnCmd(), dockerCmd()} {
		if _, err := timeIt(c); err != nil {
			return err
		}
	}
	r := report{Benchmark: "warm rebuild of an unchanged small context", Runs: runs, Target: 1.5}
	for i := 0; i < runs; i++ {
		k, err := timeIt(kilnCmd())
		if err != nil {
			return err
		}
		d, err := timeIt(dockerCmd())
		if err != nil {
			return err
		}
		r.KilnMS = append(r.KilnMS, k)
		r.DockerMS = append(r.DockerMS, d)
	}
	r.KilnMedianMS, r.DockerMedian = median(r.KilnMS), median(r.DockerMS)
	r.Ratio = r.KilnMedianMS / r.DockerMedian
	r.OverheadMS = r.KilnMedianMS - r.DockerMedian
	if v, err := exec.Command(docker, "version", "--format", "{{.Server.Version}}").Output(); err == nil {
		r.Engine = strings.TrimSpace(string(v))
	}

	fmt.Printf("\n%s (engine %s, %d alternating runs each)\n\n", r.Benchmark, r.Engine, runs)
	fmt.Printf("| %-34s | %10s |\n", "path", "median ms")
	fmt.Printf("|%s|%s|\n", strings.Repeat("-", 36), strings.Repeat("-", 12))
	fmt.Printf("| %-34s | %10.1f |\n", "kiln build via kilnd (CLI → farm)", r.KilnMedianMS)
	fmt.Printf("| %-34s | %10.1f |\n", "docker build (classic, same engine)", r.DockerMedian)
	fmt.Printf("\nratio kiln/docker = %.2f (target ≤ %.1f); kiln overhead = %.1f ms\n\n", r.Ratio, r.Target, r.OverheadMS)
	data, _ := json.MarshalIndent(r, "", "  ")
	fmt.Println(string(data))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, append(data, '\n'), 0o644)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
