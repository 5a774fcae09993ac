// Command cimodes compares, from a CI job's side, three ways to build an
// image in CI on the same small Dockerfile (a base image from the registry,
// a RUN that writes 16 MB as a dependency install would, a COPY of the
// source, a RUN over it):
//
//   - docker-in-docker: every job gets a fresh dockerd with an empty data
//     root, as a docker:dind service without a cache does (here a dockerd
//     started by this command on its own socket, data root and exec root;
//     docker:dind itself cannot be pulled here). The job pays the daemon's
//     start, the base image's pull and every step; a second build in the
//     same job is cached, the next job starts from nothing again.
//   - a mounted socket: the job talks to the host's long-lived dockerd
//     (/var/run/docker.sock), warm with earlier jobs' layers.
//   - kiln: the job runs the unprivileged kiln CLI against a warm farm
//     (kilnd on the same engine).
//
// "cold" is a build whose steps were never built before (a fresh nonce in
// the first RUN), "warm" the same build again (the next pipeline of the same
// commit, or a retried job). Each is timed as the job sees it: from the
// command's start to its end, plus, for docker-in-docker, the daemon's
// start. It prints medians as a table and as JSON
// (bench/results/cimodes.json).
//
//	go run ./bench/cimodes            # needs root, dockerd and the registry: make dev-env
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

// mode is one way of building, measured.
type mode struct {
	Name     string    `json:"name"`
	Security string    `json:"security"`
	Cache    string    `json:"cache"`
	StartMS  []float64 `json:"daemon_start_ms,omitempty"`
	ColdMS   []float64 `json:"cold_ms"`
	WarmMS   []float64 `json:"warm_ms"`
	NextMS   []float64 `json:"next_job_ms"`
	// Medians.
	Start float64 `json:"daemon_start_median_ms,omitempty"`
	Cold  float64 `json:"cold_median_ms"`
	Warm  float64 `json:"warm_median_ms"`
	Next  float64 `json:"next_job_median_ms"`
}

type report struct {
	Benchmark string  `json:"benchmark"`
	Engine    string  `json:"engine"`
	Runs      int     `json:"runs"`
	Modes     []*mode `json:"modes"`
}

func main() {
	runs := flag.Int("runs", 5, "timed rounds of each mode")
	binDir := flag.String("bin", "bin", "directory holding kilnd and kiln")
	base := flag.String("base", "127.0.0.1:5000/kiln/busybox:1", "base image, in a registry every daemon can pull from (scripts/dev-env.sh makes it)")
	out := flag.String("out", "bench/results/cimodes.json", "where to write the JSON report")
	flag.Parse()
	if err := run(*runs, *binDir, *base, *out); err != nil {
		fmt.Fprintln(os.Stderr, "cimodes:", err)
		os.Exit(1)
	}
}

func run(runs int, binDir, base, out string) error {
	if os.Geteuid() != 0 {
		return errors.New("docker-in-docker needs a dockerd of its own, which needs root (make dev-env runs as root)")
	}
	tmp, err := os.MkdirTemp("", "kiln-bench-cimodes-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	k, err := benchkit.StartKilnd(binDir, filepath.Join(tmp, "kilnd"))
	if err != nil {
		return err
	}
	defer k.Stop()
	// Pull the base into the host engine once: the socket and kiln modes
	// share a warm engine, which is the point of both.
	if _, _, err := benchkit.Time(exec.Command(benchkit.Docker(), "pull", "-q", base)); err != nil {
		return err
	}

	dind := &mode{Name: "docker-in-docker (fresh dockerd, empty data root)",
		Security: "privileged container: root on the runner's host; the job holds the daemon",
		Cache:    "none across jobs (each job's daemon starts empty)"}
	socket := &mode{Name: "mounted host socket (warm host dockerd)",
		Security: "the job is root on the host through the socket and sees every other job's images, containers and build secrets",
		Cache:    "the host engine's, shared by every job on that host"}
	kiln := &mode{Name: "kiln (unprivileged CLI, warm farm)",
		Security: "unprivileged job, a tenant token; secrets and registry credentials sealed to the farm",
		Cache:    "the farm's agents', routed to the agent that built the repository before"}
	r := report{Benchmark: "a CI job's build of a small Dockerfile", Engine: benchkit.EngineVersion(), Runs: runs,
		Modes: []*mode{dind, socket, kiln}}

	for i := 0; i < runs; i++ {
		// docker-in-docker: a job with its own daemon, then the next job
		// with another.
		for j, into := range []*[]float64{&dind.ColdMS, &dind.NextMS} {
			ctxDir, err := writeContext(tmp, base)
			if err != nil {
				return err
			}
			d, startMS, err := startDockerd(filepath.Join(tmp, fmt.Sprintf("dind-%d-%d", i, j)))
			if err != nil {
				return err
			}
			cold, err := timeBuild(d.build("kiln-bench/cimodes:dind", ctxDir))
			if err == nil && j == 0 {
				var warm float64
				if warm, err = timeBuild(d.build("kiln-bench/cimodes:dind", ctxDir)); err == nil {
					dind.WarmMS = append(dind.WarmMS, warm)
				}
			}
			d.stop()
			if err != nil {
				return err
			}
			dind.StartMS = append(dind.StartMS, startMS)
			*into = append(*into, startMS+cold)
		}

		// The host's socket and kiln: a new commit, built twice.
		for _, m := range []*mode{socket, kiln} {
			ctxDir, err := writeContext(tmp, base)
			if err != nil {
				return err
			}
			build := func() *exec.Cmd { return dockerBuild("", "kiln-bench/cimodes:socket", ctxDir) }
			if m == kiln {
				build = func() *exec.Cmd {
					return k.KilnBuild(binDir, filepath.Join(tmp, "cli-cache"), "kiln-bench/cimodes:kiln", ctxDir)
				}
			}
			cold, err := timeBuild(build())
			if err != nil {
				return err
			}
			warm, err := timeBuild(build())
			if err != nil {
				return err
			}
			m.ColdMS, m.WarmMS = append(m.ColdMS, cold), append(m.WarmMS, warm)
			// The next job of the same commit finds the engine (or the farm)
			// as the last left it: warm.
			m.NextMS = append(m.NextMS, warm)
		}
	}

	var rows []benchkit.Row
	for _, m := range r.Modes {
		m.Start, m.Cold, m.Warm, m.Next = benchkit.Median(m.StartMS), benchkit.Median(m.ColdMS), benchkit.Median(m.WarmMS), benchkit.Median(m.NextMS)
		start := "—"
		if m.StartMS != nil {
			start = fmt.Sprintf("%.0f", m.Start)
		}
		rows = append(rows, benchkit.Row{Name: m.Name, Values: []string{
			start, fmt.Sprintf("%.0f", m.Cold), fmt.Sprintf("%.0f", m.Warm), fmt.Sprintf("%.0f", m.Next),
		}})
	}
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, median of %d rounds)", r.Benchmark, r.Engine, runs),
		[]string{"mode", "daemon start ms", "cold build ms", "warm rebuild in the job ms", "next job, same commit ms"},
		rows,
		"cold: steps never built before (docker-in-docker also pulls the base and starts its daemon); warm: the same build again. "+
			"docker-in-docker's next job starts from an empty daemon, so it is cold again.",
		r, out)
}

// timeBuild runs a build command and returns its wall time in ms.
func timeBuild(c *exec.Cmd) (float64, error) {
	ms, _, err := benchkit.Time(c)
	return ms, err
}

// writeContext writes a new commit of the small project: a fresh nonce, so
// its steps were never built.
func writeContext(tmp, base string) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	nonce := hex.EncodeToString(b[:])
	dir := filepath.Join(tmp, "ctx-"+nonce)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	files := map[string]string{
		"Dockerfile": "FROM " + base + "\n" +
			"RUN echo " + nonce + " > /commit && dd if=/dev/urandom of=/deps bs=1M count=16 2>/dev/null\n" +
			"COPY app.txt /app/app.txt\n" +
			"RUN wc -c /app/app.txt /deps > /app/built\n" +
			"CMD [\"cat\", \"/app/built\"]\n",
		"app.txt": "the application's source, commit " + nonce + "\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// dockerd is a docker daemon of a job's own, as docker:dind runs one.
type dockerd struct {
	dir, sock string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// startDockerd starts a dockerd with its data root, exec root (and so its
// own containerd) and socket in dir, a bridge of its own and no iptables
// rules, and
// returns once it answers, with the time that took.
func startDockerd(dir string) (*dockerd, float64, error) {
	d := &dockerd{dir: dir, sock: filepath.Join(dir, "docker.sock"), exited: make(chan struct{})}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		return nil, 0, err
	}
	defer logf.Close()
	// A bridge of its own: with --bridge none dockerd deletes the host's
	// docker0 (removeDefaultBridgeInterface), and a second daemon must not
	// take over the host daemon's.
	for _, args := range [][]string{
		{"link", "add", dindBridge, "type", "bridge"},
		{"addr", "add", "10.213.0.1/24", "dev", dindBridge},
		{"link", "set", dindBridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			d.removeBridge()
			return nil, 0, fmt.Errorf("ip %v: %w: %s", args, err, out)
		}
	}
	start := time.Now()
	d.cmd = exec.Command("dockerd", "--host", "unix://"+d.sock,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "--bridge", dindBridge, "--iptables=false", "--ip6tables=false")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.removeBridge()
		return nil, 0, fmt.Errorf("starting dockerd: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		v := exec.CommandContext(ctx, benchkit.Docker(), "--host", "unix://"+d.sock, "version", "--format", "{{.Server.Version}}")
		if v.Run() == nil {
			return d, float64(time.Since(start).Microseconds()) / 1000, nil
		}
		select {
		case <-d.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			return nil, 0, fmt.Errorf("dockerd exited before it answered:\n%s", log)
		case <-ctx.Done():
			d.stop()
			return nil, 0, errors.New("dockerd did not answer within a minute")
		case <-tick.C:
		}
	}
}

// dindBridge is the network bridge of the job's daemon.
const dindBridge = "kilnbench0"

// removeBridge deletes the daemon's bridge.
func (d *dockerd) removeBridge() { _ = exec.Command("ip", "link", "del", dindBridge).Run() }

// build is `docker build` on this daemon.
func (d *dockerd) build(tag, ctxDir string) *exec.Cmd { return dockerBuild(d.sock, tag, ctxDir) }

// dockerBuild is `docker build` with BuildKit, the builder kiln's agents
// pick on these engines, on the daemon at sock ("" for the host's).
func dockerBuild(sock, tag, ctxDir string) *exec.Cmd {
	args := []string{"build", "-q", "-t", tag, ctxDir}
	if sock != "" {
		args = append([]string{"--host", "unix://" + sock}, args...)
	}
	c := exec.Command(benchkit.Docker(), args...)
	c.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
	return c
}

// stop stops the daemon (its pid, then its process group: the containerd
// it started) and removes its data.
func (d *dockerd) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	d.removeBridge()
	_ = os.RemoveAll(d.dir)
}
