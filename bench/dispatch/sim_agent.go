package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"

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

// simAgent is an agent without an engine: it runs the real agent's loop
// (agentproto.Worker: a WorkOffer request per free slot on
// kiln.sched.pull.<name>, heartbeats in KV KILN_AGENTS with the cache
// summary of what it ran, withdrawal on stop) and the same START and
// FINISH reports, which the scheduler fences and turns into the record's
// changes and the state and finished events — but "builds" by waiting
// buildTime.
type simAgent struct {
	name      string
	buildTime time.Duration
	conn      *bus.Conn
	client    *agentproto.Client
	log       *slog.Logger
	worker    *agentproto.Worker
	summary   agent.CacheSummary
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
	a := &simAgent{name: name, buildTime: buildTime, conn: conn, client: client, log: log.With("agent", name)}
	a.worker = &agentproto.Worker{
		Client: client, Agents: agents, Slots: slots, PollWait: simPollWait, HeartbeatEvery: simHeartbeatEvery,
		Build: a.runBuild, Record: a.record, Logger: a.log,
		Pulled: func(sent time.Time, builds []*kilnv1.Build, _ error) {
			observe.pulled(name, sent, time.Now(), builds)
		},
	}
	return a, nil
}

// run heartbeats and works its slots until ctx ends, then withdraws its
// pulls and leaves the registry. Builds still running are abandoned (no
// drain timeout).
func (a *simAgent) run(ctx context.Context) {
	_, _ = a.worker.Heartbeat(ctx)
	a.worker.Run(ctx)
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
	_, _ = a.worker.Heartbeat(ctx)
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); err != nil && ctx.Err() == nil {
		a.log.Warn("result refused", "build_id", b.Id, "err", err)
	}
}

// record is the heartbeat's record of an agent without an engine.
func (a *simAgent) record() *kilnv1.Agent {
	return &kilnv1.Agent{
		State: kilnv1.AgentState_AGENT_STATE_READY, EngineVersion: "simulated", Os: runtime.GOOS, Arch: runtime.GOARCH,
		Cache: a.summary.Proto(),
	}
}
