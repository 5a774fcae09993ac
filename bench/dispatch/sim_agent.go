package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/agent"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus"
)

// Simulated agents keep the real agent's timings (agent.Default*).
const (
	simPollWait       = 10 * time.Second
	simHeartbeatEvery = 5 * time.Second
	simLease          = 30 * time.Second
)

// simAgent is an agent without an engine: it speaks to the farm exactly as
// agent.Agent does, through package agentproto — a WorkOffer request per
// free slot on kiln.sched.pull.<name>, heartbeats in KV KILN_AGENTS with
// the cache summary of what it ran, START and FINISH reports the scheduler
// fences and turns into the record's changes and the state and finished
// events — and "builds" by waiting buildTime.
type simAgent struct {
	name      string
	slots     int
	buildTime time.Duration
	conn      *bus.Conn
	client    *agentproto.Client
	agents    jetstream.KeyValue
	log       *slog.Logger
	started   time.Time
	// observe hears of every pull as soon as it is answered (or fails).
	observe pullObserver

	busy    atomic.Int32
	summary agent.CacheSummary
}

// pullObserver hears of each pull of a simulated agent: when it was sent,
// when it was answered and with which builds (none when it timed out empty
// or failed).
type pullObserver interface {
	pulled(agent string, sent, answered time.Time, builds []*kilnv1.Build)
}

func newSimAgent(ctx context.Context, conn *bus.Conn, name string, slots int, buildTime time.Duration, log *slog.Logger, observe pullObserver) (*simAgent, error) {
	client, err := agentproto.New(conn.NC, name)
	if err != nil {
		return nil, err
	}
	agents, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	return &simAgent{
		name: name, slots: slots, buildTime: buildTime, conn: conn, client: client, agents: agents,
		log: log.With("agent", name), started: time.Now(), observe: observe,
	}, nil
}

// run heartbeats and works its slots until ctx ends, then withdraws its
// pulls and leaves the registry. Builds still running are abandoned.
func (a *simAgent) run(ctx context.Context) {
	a.heartbeat(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(simHeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.heartbeat(ctx)
			}
		}
	})
	for range a.slots {
		wg.Go(func() { a.slotLoop(ctx) })
	}
	<-ctx.Done()
	a.withdraw()
	wg.Wait()
	_ = a.agents.Delete(context.Background(), a.name)
}

// slotLoop is one slot: pull, run, repeat, as agent.slotLoop.
func (a *simAgent) slotLoop(ctx context.Context) {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
		sent := time.Now()
		builds, err := a.pull(ctx)
		a.observe.pulled(a.name, sent, time.Now(), builds)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("pull for work", "err", err)
			}
			backoff = min(max(2*backoff, 250*time.Millisecond), 5*time.Second)
			continue
		}
		backoff = 0
		for _, b := range builds {
			a.busy.Add(1)
			a.runBuild(ctx, b)
			a.busy.Add(-1)
		}
	}
}

// pull offers one free slot and waits for the scheduler's answer.
func (a *simAgent) pull(ctx context.Context) ([]*kilnv1.Build, error) {
	return a.client.Pull(ctx, simPollWait)
}

// runBuild makes agent.runBuild's reports around a wait instead of an engine.
func (a *simAgent) runBuild(ctx context.Context, assigned *kilnv1.Build) {
	if sub, err := a.conn.NC.Subscribe(bus.CancelSubject(assigned.Id), func(*nats.Msg) {}); err == nil {
		defer func() { _ = sub.Unsubscribe() }()
	}
	at, b, err := a.client.Start(ctx, assigned, simLease, agentproto.Hooks{})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("could not start assigned build", "build_id", assigned.Id, "err", err)
		}
		return
	}
	t := time.NewTimer(a.buildTime)
	defer t.Stop()
	select {
	case <-ctx.Done():
		at.Abandon()
		return // the lease brings it back; the benchmark is over anyway
	case <-t.C:
	}
	// As agent.finish: advertise the new cache before the client hears of the end.
	a.summary.Add(b.Affinity)
	a.heartbeat(ctx)
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); err != nil && ctx.Err() == nil {
		a.log.Warn("result refused", "build_id", b.Id, "err", err)
	}
}

// heartbeat writes the agent's record to KV KILN_AGENTS, as agent.heartbeat.
func (a *simAgent) heartbeat(ctx context.Context) {
	rec := &kilnv1.Agent{
		Name: a.name, State: kilnv1.AgentState_AGENT_STATE_READY, Slots: uint32(a.slots), BusySlots: uint32(a.busy.Load()),
		EngineVersion: "simulated", Os: runtime.GOOS, Arch: runtime.GOARCH,
		StartedAt: timestamppb.New(a.started), LastSeen: timestamppb.Now(), Cache: a.summary.Proto(),
	}
	data, err := proto.Marshal(rec)
	if err == nil {
		_, err = a.agents.Put(ctx, a.name, data)
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		a.log.Warn("heartbeat", "err", err)
	}
}

// withdraw takes back the agent's waiting pulls, as agent.withdraw.
func (a *simAgent) withdraw() {
	if err := a.client.Withdraw(); err != nil {
		a.log.Warn("withdraw pulls", "err", err)
	}
}
