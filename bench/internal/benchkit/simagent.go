package benchkit

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

// PullObserver hears of each pull of a simulated agent: when it was sent,
// when it was answered and with which builds (none when it timed out empty
// or failed).
type PullObserver func(agent string, sent, answered time.Time, builds []*kilnv1.Build)

// SimAgent is an agent without an engine: it runs the real agent's loop
// (agentproto.Worker with the real agent's timings, agent.Default*: a
// WorkOffer request per free slot on kiln.sched.pull.<name>, heartbeats in
// KV KILN_AGENTS with the cache summary of what it ran, withdrawal on stop)
// on a NATS connection of its own, and the same START and FINISH reports,
// which the scheduler fences and turns into the record's changes and the
// state and finished events — but "builds" by waiting buildTime.
type SimAgent struct {
	name      string
	buildTime time.Duration
	conn      *bus.Conn
	client    *agentproto.Client
	log       *slog.Logger
	worker    *agentproto.Worker
	summary   agent.CacheSummary
}

// NewSimAgent makes the simulated agent name with slots slots on conn;
// observe (when not nil) hears of its pulls.
func NewSimAgent(ctx context.Context, conn *bus.Conn, name string, slots int, buildTime time.Duration, log *slog.Logger, observe PullObserver) (*SimAgent, error) {
	client, err := agentproto.New(conn.NC, name)
	if err != nil {
		return nil, err
	}
	agents, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	a := &SimAgent{name: name, buildTime: buildTime, conn: conn, client: client, log: log.With("agent", name)}
	a.worker = &agentproto.Worker{
		Client: client, Agents: agents, Slots: slots,
		PollWait: agent.DefaultPollWait, HeartbeatEvery: agent.DefaultHeartbeatEvery,
		Build: a.runBuild, Record: a.record, Logger: a.log,
	}
	if observe != nil {
		a.worker.Pulled = func(sent time.Time, builds []*kilnv1.Build, _ error) {
			observe(name, sent, time.Now(), builds)
		}
	}
	return a, nil
}

// Run heartbeats and works its slots until ctx ends, then withdraws its
// pulls and leaves the registry. Builds still running are abandoned (no
// drain timeout).
func (a *SimAgent) Run(ctx context.Context) {
	_, _ = a.worker.Heartbeat(ctx)
	a.worker.Run(ctx)
}

// runBuild makes agent.runBuild's reports around a wait instead of an engine.
func (a *SimAgent) runBuild(ctx context.Context, assigned *kilnv1.Build) {
	if sub, err := a.conn.NC.Subscribe(bus.CancelSubject(assigned.Id), func(*nats.Msg) {}); err == nil {
		defer func() { _ = sub.Unsubscribe() }()
	}
	at, b, err := a.client.Start(ctx, assigned, agent.DefaultLease, agentproto.Hooks{})
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
func (a *SimAgent) record() *kilnv1.Agent {
	return &kilnv1.Agent{
		State: kilnv1.AgentState_AGENT_STATE_READY, EngineVersion: "simulated", Os: runtime.GOOS, Arch: runtime.GOARCH,
		Cache: a.summary.Proto(),
	}
}
