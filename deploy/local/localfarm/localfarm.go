// Package localfarm runs a whole kiln farm on one machine as separate
// processes: a nats-server cluster over loopback routes (JetStream on file
// storage, fsync on every write, one nkey per role), kiln-gateway,
// kiln-scheduler and kiln-agent processes, and one dockerd per agent with
// its own data root and bridge. The chaos tests, the benchmarks and
// deploy/local/kiln-cluster start farms with it.
//
// Every process gets its ports up front, so one that is killed and
// restarted comes back on the same addresses with the same state; Start
// waits on readiness (ready files, /readyz, the engine's ping) with
// deadlines, never on sleeps, and everything is stopped by pid.
package localfarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/readyfile"
)

// Options say what a farm runs.
type Options struct {
	NATS, Gateways, Schedulers, Agents int // NATS >= 1; others >= 0
	// Replicas is --nats-replicas for every service; 0 = 3 if NATS >= 3, else 1.
	Replicas int
	// Dir holds the state (NATS stores, engine data roots, logs); "" = a
	// temp dir that Stop removes. Keep it short: engine sockets live in it.
	Dir string
	// Bin is the directory with the kiln binaries; "" = <repo>/bin (make build).
	Bin string
	// NATSServer is the nats-server binary; "" = <repo>/bin/tools/nats-server,
	// installed at the pinned version with go install if missing.
	NATSServer string
	// AgentSlots is each agent's --slots (default 1).
	AgentSlots int
	// Images are copied from the default engine (DOCKER_HOST or the local
	// socket) into every agent's engine before the agents start.
	Images []string
	// AgentArgs, GatewayArgs and SchedulerArgs are extra flags.
	AgentArgs, GatewayArgs, SchedulerArgs []string
	// Logs receives every process's output, each line prefixed with its
	// name, besides <Dir>/logs/<name>.log; nil = the files only.
	Logs io.Writer
	// ExtraAgents are agent names that get NATS credentials (and a place
	// in the server's authorization) without a process, for simulated
	// agents a benchmark runs in-process; see Seeds.
	ExtraAgents []string
	// NoAuth runs NATS without authorization: every client connects
	// anonymously with every permission. Only for benchmarks whose
	// in-process taps subscribe where no role may; services get no nkey.
	NoAuth bool
	// NATSSync is JetStream's sync_interval: "" = "always" (fsync every
	// write, what the farm's durability promises rest on); a duration such
	// as "2m" (nats-server's default) lets a benchmark price the fsyncs.
	NATSSync string
}

// Process is one process of a farm, as Processes and the ready file list it.
type Process struct {
	Role string `json:"role"`           // "nats" | "gateway" | "scheduler" | "agent" | "engine"
	Name string `json:"name"`           // nats-1, gateway-1, scheduler-1, agent-1, engine-1 …
	PID  int    `json:"pid"`            // 0 while killed and not restarted
	Addr string `json:"addr,omitempty"` // nats: client URL; gateway: gRPC host:port; engine: unix:///…/docker.sock
	HTTP string `json:"http,omitempty"` // /healthz /readyz /metrics host:port; nats: monitoring host:port
}

// Roles.
const (
	RoleNATS      = "nats"
	RoleGateway   = "gateway"
	RoleScheduler = "scheduler"
	RoleAgent     = "agent"
	RoleEngine    = "engine"
)

// NATSServerVersion is the nats-server release the farm installs when
// Options.NATSServer is empty and bin/tools has none.
const NATSServerVersion = "v2.15.2"

// startTimeout bounds how long one process may take to serve.
const startTimeout = 2 * time.Minute

// stopGrace is how long a process may take to exit after SIGTERM.
const stopGrace = 15 * time.Second

// Farm is a running local farm.
type Farm struct {
	opts    Options
	dir     string
	tempDir bool
	seeds   bus.Seeds
	logs    *lockedWriter

	mu      sync.Mutex
	procs   []*proc // in start order
	bridges []string
}

// Start starts the farm: NATS nodes, engines, gateways, schedulers, then
// agents, each waited on until it serves. On failure it stops what it
// started and returns an error with the tail of the failing process's log.
func Start(ctx context.Context, o Options) (_ *Farm, err error) {
	if o.NATS < 1 || o.Gateways < 0 || o.Schedulers < 0 || o.Agents < 0 {
		return nil, fmt.Errorf("localfarm: need NATS >= 1 and no negative counts (got nats %d, gateways %d, schedulers %d, agents %d)", o.NATS, o.Gateways, o.Schedulers, o.Agents)
	}
	if o.Replicas == 0 {
		o.Replicas = 1
		if o.NATS >= 3 {
			o.Replicas = 3
		}
	}
	if o.Replicas > o.NATS {
		return nil, fmt.Errorf("localfarm: %d replicas need at least %d NATS nodes, have %d", o.Replicas, o.Replicas, o.NATS)
	}
	if o.AgentSlots <= 0 {
		o.AgentSlots = 1
	}
	f := &Farm{opts: o, dir: o.Dir}
	if o.Logs != nil {
		f.logs = &lockedWriter{w: o.Logs}
	}
	if f.dir == "" {
		if f.dir, err = os.MkdirTemp("", "kf"); err != nil {
			return nil, fmt.Errorf("localfarm: %w", err)
		}
		f.tempDir = true
	} else if f.dir, err = filepath.Abs(f.dir); err != nil {
		return nil, fmt.Errorf("localfarm: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Stop())
		}
	}()
	if err := os.MkdirAll(filepath.Join(f.dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("localfarm: %w", err)
	}
	if err := f.resolveBinaries(ctx); err != nil {
		return nil, err
	}
	agents := append([]string(nil), o.ExtraAgents...)
	for i := 1; i <= o.Agents; i++ {
		agents = append(agents, agentName(i))
	}
	if !o.NoAuth {
		if f.seeds, err = bus.LoadOrCreateSeeds(filepath.Join(f.dir, "creds"), agents...); err != nil {
			return nil, fmt.Errorf("localfarm: %w", err)
		}
	}
	if err := f.startNATS(ctx); err != nil {
		return nil, err
	}
	if err := f.startEngines(ctx); err != nil {
		return nil, err
	}
	if err := f.startServices(ctx); err != nil {
		return nil, err
	}
	return f, nil
}

func agentName(i int) string { return fmt.Sprintf("agent-%d", i) }

// resolveBinaries fills in Bin and NATSServer, installing nats-server if
// it is the default and missing, and checks the binaries the farm runs.
func (f *Farm) resolveBinaries(ctx context.Context) error {
	repo := RepoRoot()
	if f.opts.Bin == "" {
		f.opts.Bin = filepath.Join(repo, "bin")
	}
	if f.opts.NATSServer == "" {
		f.opts.NATSServer = filepath.Join(repo, "bin", "tools", "nats-server")
		if _, err := os.Stat(f.opts.NATSServer); err != nil {
			if err := installNATSServer(ctx, repo); err != nil {
				return err
			}
		}
	}
	need := []string{f.opts.NATSServer}
	if f.opts.Gateways > 0 {
		need = append(need, filepath.Join(f.opts.Bin, "kiln-gateway"))
	}
	if f.opts.Schedulers > 0 {
		need = append(need, filepath.Join(f.opts.Bin, "kiln-scheduler"))
	}
	if f.opts.Agents > 0 {
		need = append(need, filepath.Join(f.opts.Bin, "kiln-agent"), "dockerd")
	}
	for _, b := range need {
		if _, err := lookPath(b); err != nil {
			return fmt.Errorf("localfarm: %s: %w (run make build)", b, err)
		}
	}
	return nil
}

// RepoRoot is the root of the kiln repository this package was built from
// (the directory with go.work), found from the working directory upwards,
// else from this source file's path.
func RepoRoot() string {
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
				return d
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Dir is the farm's state directory.
func (f *Farm) Dir() string { return f.dir }

// Replicas is the --nats-replicas the farm's services run with.
func (f *Farm) Replicas() int { return f.opts.Replicas }

// Seeds are the farm's NATS credentials: the gateway's, the scheduler's
// and each agent's (Options.ExtraAgents included), for in-process clients;
// none with Options.NoAuth.
func (f *Farm) Seeds() bus.Seeds { return f.seeds }

// Bridges are the network bridges the farm made for its engines (Stop
// deletes them).
func (f *Farm) Bridges() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bridges...)
}

// Processes are the farm's processes in start order, with current pids.
func (f *Farm) Processes() []Process {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Process, 0, len(f.procs))
	for _, p := range f.procs {
		out = append(out, p.info())
	}
	return out
}

// Find is the process called name.
func (f *Farm) Find(name string) (Process, bool) {
	p := f.find(name)
	if p == nil {
		return Process{}, false
	}
	return p.info(), true
}

func (f *Farm) find(name string) *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (f *Farm) byRole(role string) []*proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*proc
	for _, p := range f.procs {
		if p.role == role {
			out = append(out, p)
		}
	}
	return out
}

// NATSURL is every NATS node's client URL, comma-separated.
func (f *Farm) NATSURL() string {
	var urls []string
	for _, p := range f.byRole(RoleNATS) {
		urls = append(urls, p.addr)
	}
	return strings.Join(urls, ",")
}

// GatewayAddrs are the gateways' gRPC addresses, in order.
func (f *Farm) GatewayAddrs() []string {
	var addrs []string
	for _, p := range f.byRole(RoleGateway) {
		addrs = append(addrs, p.addr)
	}
	return addrs
}

// Kill SIGKILLs the process called name and reaps it; Restart brings it back.
func (f *Farm) Kill(name string) error {
	p := f.find(name)
	if p == nil {
		return fmt.Errorf("localfarm: no process %q", name)
	}
	return p.kill()
}

// Restart starts the process called name again (killing it first if it
// still runs) with the same flags, ports and data, and waits until it serves.
func (f *Farm) Restart(ctx context.Context, name string) error {
	p := f.find(name)
	if p == nil {
		return fmt.Errorf("localfarm: no process %q", name)
	}
	if err := p.kill(); err != nil {
		return err
	}
	return p.start(ctx)
}

// WriteReadyFile writes {"processes": [...]} to path atomically.
func (f *Farm) WriteReadyFile(path string) error {
	data, err := json.MarshalIndent(struct {
		Processes []Process `json:"processes"`
	}{f.Processes()}, "", "  ")
	if err != nil {
		return err
	}
	if err := readyfile.WriteFile(path, data); err != nil {
		return fmt.Errorf("localfarm: %w", err)
	}
	return nil
}

// Stop stops every process (SIGTERM by pid in reverse start order, SIGKILL
// after a grace period), deletes the bridges the farm made and removes the
// state directory if it was a temp dir. It may be called more than once.
func (f *Farm) Stop() error {
	f.mu.Lock()
	procs := append([]*proc(nil), f.procs...)
	bridges := f.bridges
	f.bridges = nil
	f.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].stop(stopGrace); err != nil {
			errs = append(errs, err)
		}
	}
	for _, b := range bridges {
		if err := deleteBridge(b); err != nil {
			errs = append(errs, err)
		}
	}
	// A dockerd that was SIGKILLed leaves its data root mounted.
	if err := unmountUnder(f.dir); err != nil {
		errs = append(errs, err)
	}
	if f.tempDir {
		if err := os.RemoveAll(f.dir); err != nil {
			errs = append(errs, fmt.Errorf("localfarm: remove %s: %w", f.dir, err))
		}
	}
	return errors.Join(errs...)
}

// lockedWriter serialises writes from several processes' output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil // not Linux, or no /proc: nothing we could have left
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, mp := range points {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("localfarm: unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, "\\") {
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
