// Package benchkit is what kiln's benchmarks share: a kilnd on free ports,
// timing of commands, medians, the docker CLI matching the engine, counters
// read from /metrics, the machine's CPU pressure, simulated agents, and the
// table + JSON report.
package benchkit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Kilnd is a kilnd started for a benchmark.
type Kilnd struct {
	GRPC, HTTP string
	cmd        *exec.Cmd
}

// StartKilnd starts binDir/kilnd on free ports with its state in dir.
func StartKilnd(binDir, dir string, extra ...string) (*Kilnd, error) {
	ready := filepath.Join(dir, "ready.json")
	args := append([]string{"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(dir, "data"), "--ready-file", ready, "--log-level", "warn"}, extra...)
	cmd := exec.Command(filepath.Join(binDir, "kilnd"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	k := &Kilnd{cmd: cmd}
	deadline := time.Now().Add(time.Minute)
	for {
		data, err := os.ReadFile(ready)
		if err == nil && json.Unmarshal(data, &struct{ GRPC, HTTP *string }{&k.GRPC, &k.HTTP}) == nil && k.GRPC != "" {
			return k, nil
		}
		if time.Now().After(deadline) {
			k.Stop()
			return nil, fmt.Errorf("kilnd not ready after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops kilnd and waits for it.
func (k *Kilnd) Stop() {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	_ = k.cmd.Wait()
}

// Counter reads a counter from kilnd's /metrics.
func (k *Kilnd) Counter(name string) (float64, error) {
	res, err := http.Get("http://" + k.HTTP + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("metric %s not exposed", name)
}

// Docker is the docker CLI matching Debian's engine when installed.
func Docker() string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// EngineVersion is the engine's version, for the report.
func EngineVersion() string {
	v, err := exec.Command(Docker(), "version", "--format", "{{.Server.Version}}").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(v))
}

// Time runs c and returns its wall time in milliseconds and its output.
func Time(c *exec.Cmd) (float64, string, error) {
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	start := time.Now()
	if err := c.Run(); err != nil {
		return 0, buf.String(), fmt.Errorf("%s: %w\n%s", strings.Join(c.Args, " "), err, buf.String())
	}
	return float64(time.Since(start).Microseconds()) / 1000, buf.String(), nil
}

// Median of xs.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Row is one line of a report table.
type Row struct {
	Name   string
	Values []string
}

// Report prints a markdown table and the JSON of result, and writes the
// JSON to out.
func Report(title string, columns []string, rows []Row, summary string, result any, out string) error {
	fmt.Printf("\n%s\n\n| %s |\n|%s\n", title, strings.Join(columns, " | "), strings.Repeat("---|", len(columns)))
	for _, r := range rows {
		fmt.Printf("| %s | %s |\n", r.Name, strings.Join(r.Values, " | "))
	}
	fmt.Printf("\n%s\n\n", summary)
	data, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(data))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, append(data, '\n'), 0o644)
}

// KilnBuild is `kiln build` of ctxDir through k, quiet, tagged tag, with
// the CLI's stat cache in cacheDir.
func (k *Kilnd) KilnBuild(binDir, cacheDir, tag, ctxDir string) *exec.Cmd {
	c := exec.Command(filepath.Join(binDir, "kiln"), "build", "--gateway", k.GRPC, "--progress", "quiet", "-t", tag, ctxDir)
	c.Env = append(os.Environ(), "KILN_CACHE_DIR="+cacheDir)
	return c
}

// DockerBuild is the baseline: `docker build` of ctxDir straight on the
// engine with the classic builder, the one kiln's agents drive.
func DockerBuild(tag, ctxDir string) *exec.Cmd {
	c := exec.Command(Docker(), "build", "-q", "-t", tag, ctxDir)
	c.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	return c
}

// WarmContext writes the small context the warm-rebuild benchmarks build
// into dir/context and returns that directory: a cached RUN, a COPY and
// config-only instructions, so a rebuild is all cache hits.
func WarmContext(dir, base, note string) (string, error) {
	ctxDir := filepath.Join(dir, "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		return "", err
	}
	files := map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo warm > /warm\nCOPY app.txt /app/app.txt\nENV MODE=bench\nCMD [\"cat\", \"/app/app.txt\"]\n",
		"app.txt":    "a tiny build context" + note + "\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	return ctxDir, nil
}

// CPUPressure is the kernel's count of microseconds in which some runnable
// task waited for a CPU (/proc/pressure/cpu, "some"), other processes'
// included; -1 where it cannot be read. Over a run it shows how contended
// the machine was.
func CPUPressure() int64 {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(data), "\n")
	_, total, ok := strings.Cut(line, "total=")
	if !ok || !strings.HasPrefix(line, "some ") {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(total), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
