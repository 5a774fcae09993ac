package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/agent"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus"
)

// The simulated agents keep the real agent's timings (agent.Default*).
const (
	pollWait       = agent.DefaultPollWait
	heartbeatEvery = agent.DefaultHeartbeatEvery
	lease          = agent.DefaultLease
)

// simAgent is an agent without an engine: the real agent's loop
// (agentproto.Worker: pulls, heartbeats with the cache summary in KV
// KILN_AGENTS, withdrawal on stop) on a NATS connection of its own, and
// the real START and FINISH reports around a wait of buildTime.
type simAgent struct {
	client    *agentproto.Client
	worker    *agentproto.Worker
	buildTime time.Duration
	log       *slog.Logger
	summary   agent.CacheSummary
}

// pulled hears of every pull when it returned, with the builds it brought.
type pulled func(builds []*kilnv1.Build, at time.Time)

func newSimAgent(ctx context.Context, conn *bus.Conn, name string, slots int, buildTime time.Duration, log *slog.Logger, got pulled) (*simAgent, error) {
	client, err := agentproto.New(conn.NC, name)
	if err != nil {
		return nil, err
	}
	agents, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	a := &simAgent{client: client, buildTime: buildTime, log: log.With("agent", name)}
	a.worker = &agentproto.Worker{
		Client: client, Agents: agents, Slots: slots, PollWait: pollWait, HeartbeatEvery: heartbeatEvery,
		Build: a.build, Record: a.record, Logger: a.log,
		Pulled: func(_ time.Time, builds []*kilnv1.Build, _ error) { got(builds, time.Now()) },
	}
	return a, nil
}

// build reports START, waits buildTime and reports FINISH, as the real
// agent does around the engine.
func (a *simAgent) build(ctx context.Context, assigned *kilnv1.Build) {
	at, b, err := a.client.Start(ctx, assigned, lease, agentproto.Hooks{})
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
		return
	case <-t.C:
	}
	a.summary.Add(b.Affinity)
	_, _ = a.worker.Heartbeat(ctx) // as agent.finish: the new cache before the end
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); err != nil && ctx.Err() == nil {
		a.log.Warn("result refused", "build_id", b.Id, "err", err)
	}
}

func (a *simAgent) record() *kilnv1.Agent {
	return &kilnv1.Agent{
		State: kilnv1.AgentState_AGENT_STATE_READY, EngineVersion: "simulated", Os: runtime.GOOS, Arch: runtime.GOARCH,
		Cache: a.summary.Proto(),
	}
}

// fleet is the simulated agents, started spread over one heartbeat
// period so their heartbeats are spread as a real fleet's are.
type fleet struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
}

func startFleet(ctx context.Context, url string, n, slots int, buildTime time.Duration, log *slog.Logger, got pulled) (*fleet, error) {
	// Connect first (in parallel), then start the loops spread out.
	conns := make([]*bus.Conn, n)
	errs := make([]error, n)
	var connecting sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		connecting.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conns[i], errs[i] = bus.Connect(ctx, url, fmt.Sprintf("scale-agent-%04d", i))
		})
	}
	connecting.Wait()
	f := &fleet{}
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	agents := make([]*simAgent, n)
	for i := range n {
		if errs[i] != nil {
			closeAll()
			return nil, errs[i]
		}
		a, err := newSimAgent(ctx, conns[i], fmt.Sprintf("scale-%04d", i), slots, buildTime, log, got)
		if err != nil {
			closeAll()
			return nil, err
		}
		agents[i] = a
	}
	actx, stop := context.WithCancel(ctx)
	f.stop = func() { stop(); f.wg.Wait(); closeAll() }
	for i, a := range agents {
		f.wg.Go(func() {
			select {
			case <-time.After(time.Duration(i) * heartbeatEvery / time.Duration(n)):
			case <-actx.Done():
				return
			}
			a.worker.Run(actx)
		})
	}
	return f, nil
}
