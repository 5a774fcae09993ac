package enginetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/kilnbuild/kiln/agent/engine"
)

const (
	// engineStartTimeout bounds how long StartEngine waits for a new
	// dockerd to answer and hold the busybox base.
	engineStartTimeout = time.Minute
	// engineStopTimeout bounds how long a dockerd may take to stop on
	// SIGTERM before it is killed.
	engineStopTimeout = 30 * time.Second
	// bridgeSubnet is the /16 the engines' bridges take their /24 from:
	// bridge kilnbrN gets 10.213.N.1/24, so two engines never share a subnet.
	bridgeSubnet = "10.213"
)

// Engine is a Docker engine of its own that StartEngine runs for one test:
// a separate dockerd (with its own containerd) on a socket, data root and
// bridge nobody else uses, holding the busybox base image. A fault test
// gives each agent its own Engine so that killing one agent or engine leaves
// the others untouched.
type Engine struct {
	// Name is the name the test gave the engine, for messages.
	Name string
	// Host is the engine's address in the form DOCKER_HOST and
	// kiln-agent --docker-host take: "unix:///tmp/kiln-e-…/d.sock".
	Host string

	dir    string // holds the socket, data root, exec root and log
	bridge string
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait returned
	client *client.Client
}

// StartEngineWithEnv starts an engine as StartEngine does, its dockerd's
// environment completed by env ("KEY=VALUE", over the defaults): e.g.
// BuildKit's step log limits (engine.StepLogEnv) set low, to see the
// engine clip a step's output.
func StartEngineWithEnv(t testing.TB, name string, env ...string) *Engine {
	t.Helper()
	ref := Registry(t) + "/" + BusyboxRepo + ":" + BusyboxTag
	e, err := startEngine(name, ref, env...)
	if e != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("enginetest: log of engine %s (%s):\n%s", e.Name, e.Host, e.logTail(60))
			}
			if err := e.stop(); err != nil {
				t.Errorf("enginetest: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	return e
}

// StartEngine starts a dockerd for the rest of the test and returns once it
// answers and holds the busybox base image under the reference BusyboxBase
// returns (loaded from the same deterministic archive, so the image ID is
// the same). The engine has a bridge of its own (created for it, deleted
// with it) and no iptables rules, so RUN steps work but reach nothing
// outside. Cleanup removes every container, stops the dockerd by its pid
// (SIGTERM, then SIGKILL after a deadline), deletes the bridge and removes
// the engine's directories. It needs root, dockerd and ip(8).
func StartEngine(t testing.TB, name string) *Engine {
	t.Helper()
	return StartEngines(t, name)[0]
}

// StartEngines starts one engine per name at once, as StartEngine does, and
// stops them at once when the test ends.
func StartEngines(t testing.TB, names ...string) []*Engine {
	t.Helper()
	ref := Registry(t) + "/" + BusyboxRepo + ":" + BusyboxTag
	engines := make([]*Engine, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			engines[i], errs[i] = startEngine(name, ref)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, e := range engines {
			if e == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if t.Failed() {
					t.Logf("enginetest: log of engine %s (%s):\n%s", e.Name, e.Host, e.logTail(60))
				}
				if err := e.stop(); err != nil {
					t.Errorf("enginetest: %v", err)
				}
			}()
		}
		wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	return engines
}

// Client returns a raw Engine API client for the engine, for what a test
// checks beyond the agent's view (containers left behind, images). It is
// closed when the engine stops.
func (e *Engine) Client() *client.Client { return e.client }

// Log returns the dockerd's log so far.
func (e *Engine) Log() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "dockerd.log"))
	return string(b)
}

var engineNameRE = regexp.MustCompile(`[^a-z0-9]+`)

// startEngine starts engine name, its dockerd's environment this
// process's with BuildKit's step log limits lifted (engine.StepLogEnv) and
// then env.
func startEngine(name, busyboxRef string, env ...string) (_ *Engine, err error) {
	for _, tool := range []string{"dockerd", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("engine %s: %w (install docker.io and iproute2 with `make dev-env`)", name, err)
		}
	}
	// A unix socket path holds at most 107 bytes: keep the directory short
	// (not t.TempDir, which nests the test's name).
	short := engineNameRE.ReplaceAllString(strings.ToLower(name), "")
	if len(short) > 12 {
		short = short[:12]
	}
	dir, err := os.MkdirTemp("/tmp", "kiln-e-"+short+"-")
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	e := &Engine{Name: name, Host: "unix://" + filepath.Join(dir, "d.sock"), dir: dir, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			if serr := e.stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	if e.bridge, err = createBridge(); err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	// An empty config file keeps /etc/docker/daemon.json (hosts, bridges,
	// mirrors) out of the test engine.
	config := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(config, []byte("{}\n"), 0o644); err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	logFile, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	defer logFile.Close()
	e.cmd = exec.Command("dockerd",
		"--config-file", config,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "x"),
		"--pidfile", filepath.Join(dir, "d.pid"),
		"-H", e.Host,
		"--bridge", e.bridge,
		"--iptables=false", "--ip-masq=false",
		"--shutdown-timeout", "2",
	)
	e.cmd.Stdout, e.cmd.Stderr = logFile, logFile
	// BuildKit clips a loud step's output unless its daemon's environment
	// lifts the limits: kiln's engines keep full logs. Later entries win.
	e.cmd.Env = append(append(os.Environ(), engine.StepLogEnv()...), env...)
	// If the test binary dies without running its cleanups, the engine
	// still stops (and cleans up after itself).
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("engine %s: start dockerd: %w", name, err)
	}
	go func() { _ = e.cmd.Wait(); close(e.exited) }()

	e.client, err = client.NewClientWithOpts(client.WithHost(e.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("engine %s: docker client: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), engineStartTimeout)
	defer cancel()
	if err := e.awaitPing(ctx); err != nil {
		return nil, fmt.Errorf("engine %s: %w\n%s", name, err, e.logTail(30))
	}
	archive, imageID, err := busyboxArchive(busyboxRef)
	if err != nil {
		return nil, fmt.Errorf("engine %s: busybox base image: %w", name, err)
	}
	if err := loadImage(ctx, e.client, archive); err != nil {
		return nil, fmt.Errorf("engine %s: %w", name, err)
	}
	if inspect, err := e.client.ImageInspect(ctx, busyboxRef); err != nil || inspect.ID != imageID {
		return nil, fmt.Errorf("engine %s: busybox base %s not loaded as %s (%v)", name, busyboxRef, imageID, err)
	}
	return e, nil
}

// awaitPing polls the engine until it answers, the dockerd exits or ctx ends.
func (e *Engine) awaitPing(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := e.client.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-e.exited:
			return fmt.Errorf("dockerd exited before it answered on %s", e.Host)
		case <-ctx.Done():
			return fmt.Errorf("dockerd did not answer on %s: %w", e.Host, err)
		case <-tick.C:
		}
	}
}

// createBridge creates and brings up a bridge kilnbrN with address
// 10.213.N.1/24, for a free N, and returns its name.
func createBridge() (string, error) {
	var last error
	for range 20 {
		n, err := rand.Int(rand.Reader, big.NewInt(254))
		if err != nil {
			return "", err
		}
		num := int(n.Int64()) + 1
		name := "kilnbr" + strconv.Itoa(num)
		out, err := exec.Command("ip", "link", "add", "name", name, "type", "bridge").CombinedOutput()
		if err != nil {
			last = fmt.Errorf("ip link add %s: %v: %s", name, err, bytesTrim(out))
			if strings.Contains(string(out), "File exists") {
				continue // another engine has it
			}
			return "", last
		}
		for _, args := range [][]string{
			{"addr", "add", fmt.Sprintf("%s.%d.1/24", bridgeSubnet, num), "dev", name},
			{"link", "set", name, "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				_ = deleteBridge(name)
				return "", fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytesTrim(out))
			}
		}
		return name, nil
	}
	return "", fmt.Errorf("no free bridge name: %w", last)
}

func deleteBridge(name string) error {
	out, err := exec.Command("ip", "link", "del", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot find device") {
		return fmt.Errorf("ip link del %s: %v: %s", name, err, bytesTrim(out))
	}
	return nil
}

func bytesTrim(b []byte) string { return strings.TrimSpace(string(b)) }

// stop removes the engine's containers, stops its dockerd by pid, deletes
// its bridge and removes its directory. It is safe on a half-started Engine.
func (e *Engine) stop() error {
	var errs []error
	if e.cmd != nil && e.cmd.Process != nil {
		if e.client != nil {
			// A container that ignores SIGTERM would hold the shutdown for
			// its stop timeout; the test is done with all of them.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if list, err := e.client.ContainerList(ctx, container.ListOptions{All: true}); err == nil {
				for _, c := range list {
					_ = e.client.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
				}
			}
			cancel()
		}
		if err := e.terminate(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.client != nil {
		e.client.Close()
	}
	if e.bridge != "" {
		if err := deleteBridge(e.bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmountUnder(e.dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(e.dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping engine %s: %w", e.Name, err)
	}
	return nil
}

// terminate sends the dockerd SIGTERM and waits for it to exit; past
// engineStopTimeout it kills the dockerd and the processes it started (its
// containerd and their shims), found by pid file and by the engine's
// unique exec root on their command line.
func (e *Engine) terminate() error {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
		return nil
	case <-time.After(engineStopTimeout):
	}
	_ = e.cmd.Process.Kill()
	<-e.exited
	for _, pid := range e.children() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return fmt.Errorf("dockerd (pid %d) did not stop within %s of SIGTERM; killed it\n%s", e.cmd.Process.Pid, engineStopTimeout, e.logTail(30))
}

// children lists the processes left by the engine's dockerd: its
// containerd (pid file) and every process whose command line names the
// engine's exec root (containerd shims).
func (e *Engine) children() []int {
	var pids []int
	if b, err := os.ReadFile(filepath.Join(e.dir, "x", "containerd", "containerd.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids = append(pids, pid)
		}
	}
	procs, _ := os.ReadDir("/proc")
	marker := filepath.Join(e.dir, "x") + "/"
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), marker) && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount at or below dir, innermost first; a
// dockerd that stopped cleanly leaves none.
func unmountUnder(dir string) error {
	if dir == "" {
		return nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountPath(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("umount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// logTail returns the last n lines of the dockerd's log.
func (e *Engine) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(e.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
