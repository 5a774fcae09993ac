package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/logging/logtest"
)

// The failover test runs schedulers as separate processes: the test binary
// started again with failoverChildEnv set to the NATS URL runs one
// scheduler (TestMain) until SIGTERM, or until it is killed.
const (
	failoverChildEnv    = "KILN_SCHEDULER_TEST_CHILD_NATS_URL"
	failoverLeaderLease = 2 * time.Second
)

func TestMain(m *testing.M) {
	if url := os.Getenv(failoverChildEnv); url != "" {
		os.Exit(runChildScheduler(url))
	}
	os.Exit(m.Run())
}

// runChildScheduler is a scheduler process for the failover test.
func runChildScheduler(url string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("pid", os.Getpid())
	conn, err := bus.Connect(ctx, url, "failover-scheduler")
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer conn.Close()
	s, err := New(ctx, Config{Conn: conn, Logger: log, Lease: time.Minute, AssignTimeout: 5 * time.Second,
		SweepEvery: 50 * time.Millisecond, LeaderLease: failoverLeaderLease})
	if err == nil {
		err = s.Run(ctx)
	}
	if err != nil {
		log.Error("scheduler", "err", err)
		return 1
	}
	return 0
}

// schedulerProc is one scheduler process of the failover test.
type schedulerProc struct {
	cmd    *exec.Cmd
	out    *logtest.Buffer
	exited chan struct{}
}

func startSchedulerProc(t *testing.T, url string) *schedulerProc {
	t.Helper()
	p := &schedulerProc{out: &logtest.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), failoverChildEnv+"="+url)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.exited
		if t.Failed() {
			t.Logf("scheduler pid %d:\n%s", p.cmd.Process.Pid, p.out)
		}
	})
	return p
}

// leaderPID is the process id in a leader lease holder's id
// (host-pid-random, see newElector).
func leaderPID(holder string) int {
	parts := strings.Split(holder, "-")
	if len(parts) < 3 {
		return 0
	}
	pid, _ := strconv.Atoi(parts[len(parts)-2])
	return pid
}

// failoverAgent is an agent without an engine: it runs the real agent's
// loop (agentproto.Worker: one WorkOffer per free slot, heartbeats),
// reports RUNNING and, once let go, SUCCEEDED, and counts what it was
// handed and what it finished.
type failoverAgent struct {
	client *agentproto.Client

	mu       sync.Mutex
	started  map[string]int // build id → RUNNING written
	finished map[string]int // build id → SUCCEEDED written
	ends     int            // Finish calls returned, accepted or not
	running  chan string    // a build went RUNNING
	hold     chan struct{}  // closed: builds finish; until then they stay RUNNING
}

// worker is the agent's loop with slots slots.
func (a *failoverAgent) worker(t *testing.T, agents jetstream.KeyValue, slots int) *agentproto.Worker {
	return &agentproto.Worker{
		Client: a.client, Agents: agents, Slots: slots, PollWait: time.Second, HeartbeatEvery: time.Second,
		Build: a.run, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

func (a *failoverAgent) run(ctx context.Context, assigned *kilnv1.Build) {
	at, b, err := a.client.Start(ctx, assigned, time.Minute, agentproto.Hooks{})
	if err != nil {
		return
	}
	a.mu.Lock()
	a.started[b.Id]++
	a.mu.Unlock()
	select {
	case a.running <- b.Id:
	case <-a.hold:
	case <-ctx.Done():
		return
	}
	select {
	case <-a.hold:
	case <-ctx.Done():
		return
	}
	_, err = at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, "")
	a.mu.Lock()
	if err == nil {
		a.finished[b.Id]++
	}
	a.ends++
	a.mu.Unlock()
}

// TestLeaderKilledStandbyTakesOver runs two scheduler processes on one
// NATS server and SIGKILLs the leader while builds run and wait in its
// queue: it cannot resign, so the standby takes over when the lease lapses,
// rebuilds the queue and the running set from KV, and every accepted build
// — running at the kill, queued at the kill, or submitted while no
// scheduler led — runs once and finishes once.
func TestLeaderKilledStandbyTakesOver(t *testing.T) {
	conn := bustest.Conn(t)
	ctx := t.Context()
	store, err := buildstore.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	leaderKV, err := conn.JS.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := leaderKV.Watch(ctx, leaderKey)
	if err != nil {
		t.Fatal(err)
	}
	defer leases.Stop()
	url := conn.NC.ConnectedUrl()
	procs := map[int]*schedulerProc{}
	for range 2 {
		p := startSchedulerProc(t, url)
		procs[p.cmd.Process.Pid] = p
	}
	// nextLease waits for a leader lease record held by a scheduler other
	// than not (0: any).
	nextLease := func(not int) (*kilnv1.LeaderLease, int) {
		t.Helper()
		for e := range leases.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			l := &kilnv1.LeaderLease{}
			if err := bus.Decode(e.Value(), l); err != nil {
				t.Fatal(err)
			}
			if pid := leaderPID(l.Holder); pid != not && procs[pid] != nil {
				return l, pid
			}
		}
		t.Fatal("leader lease watch ended")
		return nil, 0
	}
	_, leader := nextLease(0)

	const agents, slots = 2, 2
	hold := make(chan struct{})
	running := make(chan string, 64)
	var fleet []*failoverAgent
	actx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stopAgents(); wg.Wait() })
	agentsKV, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	for i := range agents {
		client, err := agentproto.New(conn.NC, fmt.Sprint("agent-", i))
		if err != nil {
			t.Fatal(err)
		}
		a := &failoverAgent{client: client,
			started: map[string]int{}, finished: map[string]int{}, running: running, hold: hold}
		fleet = append(fleet, a)
		w := a.worker(t, agentsKV, slots)
		wg.Go(func() { w.Run(actx) })
	}
	// Accepted builds: record, then intake message, as the gateway does.
	var ids []string
	submit := func(n int) {
		for range n {
			id := buildstore.NewID(time.Now())
			ids = append(ids, id)
			if _, err := store.Create(ctx, &kilnv1.Build{Id: id, Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED,
				Spec: &kilnv1.BuildSpec{}, CreatedAt: timestamppb.Now()}); err != nil {
				t.Fatal(err)
			}
			msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: id})
			if _, err := conn.JS.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Every slot runs a build and holds it; as many more wait in the
	// leader's queue.
	submit(2 * agents * slots)
	for range agents * slots {
		<-running
	}
	// What the leader renewed last: the standby must not lead before it
	// lapses.
	last, err := leaderKV.Get(ctx, leaderKey)
	if err != nil {
		t.Fatal(err)
	}
	lapse := &kilnv1.LeaderLease{}
	if err := bus.Decode(last.Value(), lapse); err != nil {
		t.Fatal(err)
	}
	if err := procs[leader].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-procs[leader].exited
	killed := time.Now()
	submit(agents * slots) // accepted while no scheduler leads

	l, standby := nextLease(leader)
	took := time.Since(killed)
	// The standby leads once the dead leader's lease lapses (it had at
	// most LeaderLease left at the kill), not before, and notices within a
	// campaign interval (LeaderLease/3); the bound leaves the rest of a
	// lease for a loaded machine.
	acquired := l.ExpiresAt.AsTime().Add(-failoverLeaderLease)
	if lapsed := lapse.ExpiresAt.AsTime(); acquired.Before(lapsed) {
		t.Errorf("standby took the lease at %v, before the dead leader's lapsed at %v", acquired, lapsed)
	} else if late := acquired.Sub(lapsed); late > failoverLeaderLease {
		t.Errorf("standby took the lease %v after the dead leader's lapsed, want within %v", late, failoverLeaderLease)
	}
	t.Logf("scheduler %d killed; scheduler %d leads %v later (leader lease %v)", leader, standby, took.Round(time.Millisecond), failoverLeaderLease)

	close(hold) // the held builds finish; the queued ones run under the standby
	builds, err := conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	w, err := builds.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	done := map[string]bool{}
	for e := range w.Updates() {
		if e == nil {
			continue
		}
		b := &kilnv1.Build{}
		if err := bus.Decode(e.Value(), b); err != nil {
			t.Fatal(err)
		}
		if buildstore.Terminal(b.State) {
			done[b.Id] = true
		}
		if len(done) == len(ids) {
			break
		}
	}
	// The record is written before the finished event is published and
	// the agent hears back: wait for every Finish to return.
	waitUntil(t, "every agent's Finish to return", func() bool {
		ends := 0
		for _, a := range fleet {
			a.mu.Lock()
			ends += a.ends
			a.mu.Unlock()
		}
		return ends >= len(ids)
	})
	for _, id := range ids {
		b, _, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		started, finished := 0, 0
		for _, a := range fleet {
			a.mu.Lock()
			started += a.started[id]
			finished += a.finished[id]
			a.mu.Unlock()
		}
		if b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || b.Attempt != 1 || started != 1 || finished != 1 {
			t.Errorf("build %s: %s at attempt %d, started %d and finished %d times; want SUCCEEDED at attempt 1, once each",
				id, b.State, b.Attempt, started, finished)
		}
	}
}
