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
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/agent"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Simulated agents keep the real agent's timings (agent.Default*).
const (
	simPollWait       = 10 * time.Second
	simHeartbeatEvery = 5 * time.Second
	simLease          = 30 * time.Second
)

// simAgent is an agent without an engine: it speaks to the farm exactly as
// agent.Agent does — a WorkOffer request per free slot on bus.SubjectPull,
// heartbeats in KV KILN_AGENTS with the cache summary of what it ran,
// RUNNING and the result written with UpdateAttempt, the state and finished
// events on KILN_EVENTS — and "builds" by waiting buildTime.
type simAgent struct {
	name      string
	slots     int
	buildTime time.Duration
	conn      *bus.Conn
	builds    *buildstore.Store
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
	builds, err := buildstore.Open(ctx, conn.JS)
	if err != nil {
		return nil, err
	}
	agents, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	return &simAgent{
		name: name, slots: slots, buildTime: buildTime, conn: conn, builds: builds, agents: agents,
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
	msg, err := bus.NewMsg(bus.SubjectPull, &kilnv1.WorkOffer{Agent: a.name, FreeSlots: 1, Wait: durationpb.New(simPollWait)})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, simPollWait+5*time.Second)
	defer cancel()
	reply, err := a.conn.NC.RequestMsgWithContext(rctx, msg)
	if err != nil {
		return nil, fmt.Errorf("work offer: %w", err)
	}
	resp := &kilnv1.WorkAssignment{}
	if err := bus.Decode(reply.Data, resp); err != nil {
		return nil, err
	}
	return resp.Builds, nil
}

// runBuild does agent.runBuild's writes around a wait instead of an engine.
func (a *simAgent) runBuild(ctx context.Context, assigned *kilnv1.Build) {
	now := time.Now()
	b, err := a.builds.UpdateAttempt(ctx, assigned.Id, assigned.Attempt, func(b *kilnv1.Build) error {
		if b.Agent != a.name || b.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED {
			return fmt.Errorf("%w: build is %s on agent %q", buildstore.ErrFenced, b.State, b.Agent)
		}
		b.State = kilnv1.BuildState_BUILD_STATE_RUNNING
		b.StartedAt = timestamppb.New(now)
		b.LeaseExpiresAt = timestamppb.New(now.Add(simLease))
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("could not start assigned build", "build_id", assigned.Id, "err", err)
		}
		return
	}
	a.event(ctx, b, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{
		State: b.State, Agent: a.name, Attempt: b.Attempt, Message: fmt.Sprintf("running on agent %q (attempt %d)", a.name, b.Attempt)}}})
	if sub, err := a.conn.NC.Subscribe(bus.CancelSubject(b.Id), func(*nats.Msg) {}); err == nil {
		defer func() { _ = sub.Unsubscribe() }()
	}
	if _, _, err := a.builds.Get(ctx, b.Id); err != nil && ctx.Err() == nil {
		a.log.Warn("read build", "build_id", b.Id, "err", err)
	}
	t := time.NewTimer(a.buildTime)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return // the lease brings it back; the benchmark is over anyway
	case <-t.C:
	}
	rec, err := a.builds.UpdateAttempt(ctx, b.Id, b.Attempt, func(r *kilnv1.Build) error {
		r.State = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		r.Result = &kilnv1.BuildResult{}
		r.FinishedAt = timestamppb.Now()
		r.LeaseExpiresAt = nil
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("result refused", "build_id", b.Id, "err", err)
		}
		return
	}
	// As agent.finish: advertise the new cache before the client hears of the end.
	a.summary.Add(rec.Affinity)
	a.heartbeat(ctx)
	a.event(ctx, rec, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
		State: rec.State, Result: rec.Result, Agent: a.name}}})
}

func (a *simAgent) event(ctx context.Context, b *kilnv1.Build, ev *kilnv1.BuildEvent) {
	ev.BuildId, ev.Attempt = b.Id, b.Attempt
	if err := bus.PublishEvent(ctx, a.conn.JS, ev); err != nil && ctx.Err() == nil {
		a.log.Warn("publish event", "build_id", b.Id, "err", err)
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
	msg, err := bus.NewMsg(bus.SubjectWithdraw, &kilnv1.WorkOffer{Agent: a.name})
	if err == nil {
		err = a.conn.NC.PublishMsg(msg)
	}
	if err == nil {
		err = a.conn.NC.Flush()
	}
	if err != nil {
		a.log.Warn("withdraw pulls", "err", err)
	}
}
