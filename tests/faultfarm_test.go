package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/logging/logtest"
)

// This file is the fault tests' harness: a farm of separate kiln processes
// (gateway, scheduler, one agent per engine of its own) against an
// in-process NATS server that the test can restart, processes the test can
// kill, stop and restart, and watchers of a build's events.

// faultProc is one kiln binary a fault test runs and may signal.
type faultProc struct {
	name   string
	cmd    *exec.Cmd
	logs   *logtest.Buffer
	exited chan struct{}
	addrs  map[string]string
}

// startFaultProc runs bin with args plus --ready-file and waits until it is
// ready. Cleanup resumes it if it is stopped, sends SIGTERM and waits.
func startFaultProc(t *testing.T, name, bin string, args ...string) *faultProc {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready.json")
	p := &faultProc{name: name, logs: &logtest.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append(args, "--ready-file", ready)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(time.Minute):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.logs.String())
		}
	})
	waitFor(t, time.Minute, p.name+" to be ready", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before it was ready:\n%s", p.name, p.logs.String())
		default:
		}
		data, err := os.ReadFile(ready)
		return err == nil && json.Unmarshal(data, &p.addrs) == nil
	})
	return p
}

// kill sends SIGKILL and waits until the process is gone.
func (p *faultProc) kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s (pid %d) still runs 30s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// terminate sends SIGTERM and waits until the process has exited.
func (p *faultProc) terminate(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("terminate %s: %v", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatalf("%s (pid %d) still runs a minute after SIGTERM", p.name, p.cmd.Process.Pid)
	}
}

// signal sends sig (SIGSTOP, SIGCONT) to the process.
func (p *faultProc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// ready reports whether the process answers 200 on /readyz.
func (p *faultProc) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addrs["http"]+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitLog waits until a line of the process's log satisfies match.
func (p *faultProc) waitLog(t testing.TB, within time.Duration, what string, match func(line string) bool) string {
	t.Helper()
	var found string
	waitFor(t, within, what+" in the log of "+p.name, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.logs.String()))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if match(sc.Text()) {
				found = sc.Text()
				return true
			}
		}
		return false
	})
	return found
}

// faultFarmOptions shape a farm.
type faultFarmOptions struct {
	lease       time.Duration // scheduler's and agents' --lease (default 3s)
	maxAttempts int           // scheduler's --max-attempts (default 3)
	slots       int           // each agent's --slots (default 1)
	// spareAgents names agents the test starts later (startAgent): the
	// NATS server accepts only the credentials it was started with.
	spareAgents []string
}

// faultFarm is a kiln farm of separate processes: an in-process NATS
// server, one gateway, one scheduler and one agent per engine, each with
// its own NATS credential and its role's permissions.
type faultFarm struct {
	t        *testing.T
	opts     faultFarmOptions
	base     string // busybox base image reference
	natsDir  string
	seeds    bus.Seeds // the roles' credentials
	natsAddr string    // 127.0.0.1:port, the same across NATS restarts
	ns       *server.Server
	conn     *bus.Conn // the test's own connection, to read raw event logs
	gw       *faultProc
	sched    *faultProc
	agents   map[string]*faultProc
	bs       kilnv1.BuildServiceClient
	cs       kilnv1.ContextServiceClient
}

// startFaultFarm starts NATS, the gateway, the scheduler and, for each
// engine, an agent named agentNames[i] on it. Processes stop before NATS,
// and NATS before the engines, when the test ends.
func startFaultFarm(t *testing.T, opts faultFarmOptions, engines []*enginetest.Engine, agentNames ...string) *faultFarm {
	t.Helper()
	if opts.lease == 0 {
		opts.lease = 3 * time.Second
	}
	if opts.maxAttempts == 0 {
		opts.maxAttempts = 3
	}
	if opts.slots == 0 {
		opts.slots = 1
	}
	f := &faultFarm{t: t, opts: opts, base: enginetest.BusyboxBase(t), natsDir: t.TempDir(), agents: map[string]*faultProc{}}
	var err error
	if f.seeds, err = bus.LoadOrCreateSeeds(t.TempDir(), append(slices.Clone(agentNames), opts.spareAgents...)...); err != nil {
		t.Fatal(err)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: f.natsDir, Identities: f.seeds.Identities})
	if err != nil {
		t.Fatal(err)
	}
	f.ns = ns
	f.natsAddr = ns.Addr().(*net.TCPAddr).String()
	t.Cleanup(func() { f.ns.Shutdown(); f.ns.WaitForShutdown() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The test reads raw event logs as the gateway does.
	gwAuth, err := bus.ClientAuth{NkeyFile: f.seeds.File(bus.RoleGateway, "")}.Options()
	if err != nil {
		t.Fatal(err)
	}
	if f.conn, err = bus.Connect(ctx, f.natsURL(), "kiln-fault-test", gwAuth...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.conn.Close)

	f.gw = startFaultProc(t, "kiln-gateway", gatewayBin, "--nats-url", f.natsURL(), "--nats-nkey-file", f.seeds.File(bus.RoleGateway, ""),
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	f.startScheduler()
	for i, e := range engines {
		f.startAgent(agentNames[i], e)
	}
	cc, err := grpc.NewClient(f.gw.addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	f.bs, f.cs = kilnv1.NewBuildServiceClient(cc), kilnv1.NewContextServiceClient(cc)
	return f
}

func (f *faultFarm) natsURL() string { return "nats://" + f.natsAddr }

// startScheduler starts a kiln-scheduler (again) and makes it f.sched.
func (f *faultFarm) startScheduler() *faultProc {
	f.t.Helper()
	f.sched = startFaultProc(f.t, "kiln-scheduler", schedulerBin, "--nats-url", f.natsURL(), "--nats-nkey-file", f.seeds.File(bus.RoleScheduler, ""),
		"--http-listen", "127.0.0.1:0", "--lease", f.opts.lease.String(),
		"--max-attempts", strconv.Itoa(f.opts.maxAttempts), "--log-level", "debug")
	return f.sched
}

// startAgent starts a kiln-agent called name on engine e, with a blob cache
// of its own.
func (f *faultFarm) startAgent(name string, e *enginetest.Engine) *faultProc {
	f.t.Helper()
	p := startFaultProc(f.t, "kiln-agent "+name, agentBin, "--nats-url", f.natsURL(), "--nats-nkey-file", f.seeds.File(bus.RoleAgent, name),
		"--name", name, "--slots", strconv.Itoa(f.opts.slots), "--docker-host", e.Host,
		"--blob-cache-dir", f.t.TempDir(), "--http-listen", "127.0.0.1:0",
		"--lease", f.opts.lease.String(), "--drain-timeout", "1s", "--log-level", "debug")
	f.agents[name] = p
	return p
}

// restartNATS shuts the NATS server down, waits until every running kiln
// process reports it unready (/readyz), runs between (if not nil), and
// starts NATS again on the same port and store directory.
func (f *faultFarm) restartNATS(between func()) {
	f.t.Helper()
	f.ns.Shutdown()
	f.ns.WaitForShutdown()
	down := time.Now()
	waitFor(f.t, 30*time.Second, "every process to notice NATS is down", func() bool {
		for _, p := range f.running() {
			if p.ready() {
				return false
			}
		}
		return true
	})
	if between != nil {
		between()
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: f.natsAddr, StoreDir: f.natsDir, Identities: f.seeds.Identities})
	if err != nil {
		f.t.Fatalf("restart NATS on %s: %v", f.natsAddr, err)
	}
	f.ns = ns
	f.t.Logf("NATS was down for %v", time.Since(down).Round(time.Millisecond))
	up := time.Now()
	waitFor(f.t, time.Minute, "every process to be ready again", func() bool {
		for _, p := range f.running() {
			if !p.ready() {
				return false
			}
		}
		return true
	})
	f.t.Logf("every process was ready %v after NATS came back", time.Since(up).Round(time.Millisecond))
}

// running lists the farm's processes that have not exited.
func (f *faultFarm) running() []*faultProc {
	var out []*faultProc
	for _, p := range append([]*faultProc{f.gw, f.sched}, slices.Collect(maps.Values(f.agents))...) {
		select {
		case <-p.exited:
		default:
			out = append(out, p)
		}
	}
	return out
}

// submit uploads a context holding dockerfile and starts a build of it
// with spec (nil: defaults), returning the build id.
func (f *faultFarm) submit(t testing.TB, dockerfile string, spec *kilnv1.BuildSpec) string {
	t.Helper()
	return f.submitFiles(t, map[string]string{"Dockerfile": dockerfile}, spec)
}

// submitFiles uploads a tar context of files and starts a build of it.
func (f *faultFarm) submitFiles(t testing.TB, files map[string]string, spec *kilnv1.BuildSpec) string {
	t.Helper()
	id, err := f.trySubmit(context.Background(), tarContext(t, files), spec)
	if err != nil {
		t.Fatalf("start build: %v", err)
	}
	return id
}

// trySubmit uploads the tar context blob and starts a build of it; it
// touches no testing.TB, so goroutines may call it.
func (f *faultFarm) trySubmit(ctx context.Context, blob []byte, spec *kilnv1.BuildSpec) (string, error) {
	d := digestOf(blob)
	if err := uploadCtx(ctx, f.cs, blob, d); err != nil {
		return "", err
	}
	if spec == nil {
		spec = &kilnv1.BuildSpec{}
	}
	resp, err := f.bs.StartBuild(ctx, &kilnv1.StartBuildRequest{
		Spec: spec, Context: &kilnv1.ContextRef{Digest: d, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR},
	})
	if err != nil {
		return "", err
	}
	return resp.Build.Id, nil
}

// uploadCtx uploads blob in 1 MiB chunks, with a context and no
// testing.TB so goroutines may call it.
func uploadCtx(ctx context.Context, cs kilnv1.ContextServiceClient, blob []byte, d *kilnv1.Digest) error {
	stream, err := cs.UploadBlobs(ctx)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	for off := 0; ; off += chunk {
		end := min(off+chunk, len(blob))
		req := &kilnv1.UploadBlobsRequest{WriteOffset: int64(off), Data: blob[off:end], FinishWrite: end == len(blob)}
		if off == 0 {
			req.Digest = d
		}
		if err := stream.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				break // the gateway ended the upload; CloseAndRecv says why
			}
			return err
		}
		if end == len(blob) {
			break
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

// get returns a build's record.
func (f *faultFarm) get(t testing.TB, id string) *kilnv1.Build {
	t.Helper()
	resp, err := f.bs.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: id})
	if err != nil {
		t.Fatalf("GetBuild %s: %v", id, err)
	}
	return resp.Build
}

// list returns every build's record.
func (f *faultFarm) list(t testing.TB) []*kilnv1.Build {
	t.Helper()
	resp, err := f.bs.ListBuilds(context.Background(), &kilnv1.ListBuildsRequest{PageSize: 1000})
	if err != nil {
		t.Fatalf("ListBuilds: %v", err)
	}
	return resp.Builds
}

// eventLog reads a build's whole event log from stream KILN_EVENTS, past
// its first finished event (WatchBuild stops there), so a test can count
// finished events.
func (f *faultFarm) eventLog(t testing.TB, id string) []*kilnv1.BuildEvent {
	t.Helper()
	return bustest.EventLog(t, f.conn.JS, id)
}

// finishedEvents returns the finished events in log.
func finishedEvents(log []*kilnv1.BuildEvent) []*kilnv1.BuildEvent {
	var out []*kilnv1.BuildEvent
	for _, ev := range log {
		if ev.GetFinished() != nil {
			out = append(out, ev)
		}
	}
	return out
}

// watcher follows one build's events through the gateway's WatchBuild.
type watcher struct {
	id   string
	mu   sync.Mutex
	evs  []*kilnv1.BuildEvent
	err  error
	done chan struct{}
}

// watch starts following a build's events from the start of its log.
func (f *faultFarm) watch(t testing.TB, id string) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := f.bs.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
	if err != nil {
		cancel()
		t.Fatalf("watch %s: %v", id, err)
	}
	w := &watcher{id: id, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			resp, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					w.err = err
				}
				w.mu.Unlock()
				return
			}
			w.evs = append(w.evs, resp.Event)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// waitEvent waits for an event that satisfies match and returns it.
func (w *watcher) waitEvent(t testing.TB, within time.Duration, what string, match func(*kilnv1.BuildEvent) bool) *kilnv1.BuildEvent {
	t.Helper()
	var found *kilnv1.BuildEvent
	waitFor(t, within, what+" (build "+w.id+")", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, ev := range w.evs {
			if match(ev) {
				found = ev
				return true
			}
		}
		select {
		case <-w.done:
			t.Fatalf("the watch of build %s ended (%v) without %s; events:\n%s", w.id, w.err, what, eventsString(w.evs))
		default:
		}
		return false
	})
	return found
}

// finished waits for the watch to end with a finished event and returns it.
func (w *watcher) finished(t testing.TB, within time.Duration) *kilnv1.BuildFinished {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(within):
		w.mu.Lock()
		defer w.mu.Unlock()
		t.Fatalf("build %s did not finish within %s; events:\n%s", w.id, within, eventsString(w.evs))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || len(w.evs) == 0 || w.evs[len(w.evs)-1].GetFinished() == nil {
		t.Fatalf("the watch of build %s ended (%v) without a finished event:\n%s", w.id, w.err, eventsString(w.evs))
	}
	return w.evs[len(w.evs)-1].GetFinished()
}

// isState matches a state-changed event to state at attempt (0: any).
func isState(state kilnv1.BuildState, attempt uint32) func(*kilnv1.BuildEvent) bool {
	return func(ev *kilnv1.BuildEvent) bool {
		s := ev.GetState()
		return s != nil && s.State == state && (attempt == 0 || ev.Attempt == attempt)
	}
}

// isLog matches a log line of the build's output.
func isLog(text string) func(*kilnv1.BuildEvent) bool {
	return func(ev *kilnv1.BuildEvent) bool { return ev.GetLog().GetText() == text }
}

func eventsString(evs []*kilnv1.BuildEvent) string {
	var b strings.Builder
	for i, ev := range evs {
		seq := ev.Sequence
		if seq == 0 { // read from the stream, not through WatchBuild
			seq = uint64(i + 1)
		}
		b.WriteString("  ")
		b.WriteString(strconv.FormatUint(seq, 10))
		b.WriteString(" attempt ")
		b.WriteString(strconv.FormatUint(uint64(ev.Attempt), 10))
		b.WriteString(": ")
		b.WriteString(strings.TrimSpace(ev.String()))
		b.WriteString("\n")
	}
	return b.String()
}

// waitAllTerminal waits until every build in the farm is SUCCEEDED, FAILED
// or CANCELLED, and returns them.
func (f *faultFarm) waitAllTerminal(t testing.TB, within time.Duration) []*kilnv1.Build {
	t.Helper()
	var builds []*kilnv1.Build
	waitFor(t, within, "every build to end", func() bool {
		resp, err := f.bs.ListBuilds(context.Background(), &kilnv1.ListBuildsRequest{PageSize: 1000})
		if err != nil {
			return false // NATS may still be coming back
		}
		builds = resp.Builds
		for _, b := range builds {
			if !buildstore.Terminal(b.State) {
				return false
			}
		}
		return true
	})
	return builds
}

// containersMentioning lists the containers (running or not) on e whose
// command mentions marker.
func containersMentioning(t testing.TB, e *enginetest.Engine, marker string) []string {
	t.Helper()
	list, err := e.Client().ContainerList(context.Background(), container.ListOptions{All: true})
	if err != nil {
		t.Fatalf("list containers on engine %s: %v", e.Name, err)
	}
	var out []string
	for _, c := range list {
		if strings.Contains(c.Command, marker) {
			out = append(out, c.ID[:12]+" "+c.State+" "+c.Command)
		}
	}
	return out
}
