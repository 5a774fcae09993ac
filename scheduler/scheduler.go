// Package scheduler hands queued builds to agents. The build record in KV
// KILN_BUILDS is the source of truth; the scheduler keeps only derived state
// (the queue, the set of builds under lease) and rebuilds it from KV when it
// starts, so a restart loses nothing.
//
//	gateway ──kiln.requests──▶ intake ──▶ dispatcher ◀──kiln.sched.pull.<agent>── agents
//	                                        ▲   │ routing.Route: cache affinity, costs or delay
//	                                        │   │ scheduling, fairness; QUEUED → ASSIGNED (CAS)
//	                                        ├── build watch: ended → lineage costs, lease renewals
//	                                        └── sweeper: lease lapsed → QUEUED, attempt+1 on next assignment
//
//	agents ──kiln.agent.report.<agent>──▶ reports (every instance): fenced by agent and attempt,
//	                                      the only writer of a leased build's record and events
//
// The dispatcher (dispatcher.go) owns the queue and the agents' waiting
// pulls; routing decisions are the pure function in package routing.
// Agents write nothing themselves: their reports are checked and applied
// by any scheduler instance (agentproto.Handler). What
// the dispatcher learns from finished builds (costs.go) lets the router
// weigh waiting for a busy agent against a cache miss.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Config wires a Scheduler.
type Config struct {
	Conn   *bus.Conn
	Logger *slog.Logger
	// Lease is how long an agent holds a build without renewing.
	Lease time.Duration
	// AssignTimeout is how long an ASSIGNED build waits for its agent to
	// confirm it (RUNNING) before it goes back to the queue: an answer to a
	// pull can be lost when the agent gave up waiting.
	AssignTimeout time.Duration
	// MaxAttempts is how many agents may lose a build before it fails.
	MaxAttempts uint32
	// SweepEvery is how often lapsed leases are looked for.
	SweepEvery time.Duration
	// LeaderLease is how long a leader holds office without renewing.
	LeaderLease time.Duration
	// Routing tunes the router (delay, tenant weights and caps).
	Routing routing.Config
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Defaults for zero Config fields.
const (
	DefaultLease         = 30 * time.Second
	DefaultAssignTimeout = 15 * time.Second
	DefaultMaxAttempts   = 3
	DefaultSweepEvery    = time.Second
	DefaultRouteDelay    = 2 * time.Second
	maxPollWait          = 60 * time.Second
	// asyncMaxPending bounds the events published and not yet
	// acknowledged; past it publishing waits.
	asyncMaxPending = 1024
	// asyncDrain bounds how long a term that ends waits for them.
	asyncDrain = 5 * time.Second
	// replyMargin keeps the answer inside the agent's request timeout.
	replyMargin = 500 * time.Millisecond
)

// Scheduler queues builds and answers agents' pulls.
type Scheduler struct {
	cfg    Config
	log    *slog.Logger
	builds *buildstore.Store
	kv     jetstream.KeyValue // KILN_BUILDS, for the build watch
	d      *dispatcher        // the current term's
	deps   dispatchDeps
	// reports applies the agents' reports (package agentproto).
	reports *agentproto.Handler
	// async publishes the dispatcher's ASSIGNED events without waiting for
	// each acknowledgement: in order on the one connection, failures logged.
	async jetstream.JetStream

	mu sync.Mutex
	// leased holds the builds ASSIGNED or RUNNING, for the sweeper, with
	// when their lease expires as last seen (zero: not known).
	leased map[string]time.Time
	// deadlines holds the unfinished builds with a timeout and when to
	// look at each next (timeouts.go).
	deadlines map[string]time.Time
	// kids are multi-platform builds' children's last seen states
	// (parents.go).
	kids kidStates
}

// New binds a Scheduler to the farm's NATS resources (bus.Setup must have run).
func New(ctx context.Context, cfg Config) (*Scheduler, error) {
	builds, err := buildstore.Open(ctx, cfg.Conn.JS)
	if err != nil {
		return nil, err
	}
	kv, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketBuilds, err)
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.AssignTimeout == 0 {
		cfg.AssignTimeout = min(DefaultAssignTimeout, cfg.Lease)
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = DefaultSweepEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LeaderLease == 0 {
		cfg.LeaderLease = DefaultLeaderLease
	}
	if cfg.Routing.Delay == 0 {
		cfg.Routing.Delay = DefaultRouteDelay
	}
	log := cfg.Logger
	async, err := jetstream.New(cfg.Conn.NC,
		jetstream.WithPublishAsyncMaxPending(asyncMaxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			log.Error("publish build event", "subject", m.Subject, "build_id", strings.TrimPrefix(m.Subject, bus.EventsSubject("")), "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	reports, err := agentproto.NewHandler(ctx, agentproto.HandlerConfig{
		Conn: cfg.Conn, Logger: log, Lease: cfg.Lease, Now: cfg.Now, Refused: reportsFenced.Inc,
	})
	if err != nil {
		return nil, err
	}
	s := &Scheduler{cfg: cfg, log: cfg.Logger, builds: builds, kv: kv, async: async, reports: reports, leased: map[string]time.Time{}, deadlines: map[string]time.Time{}}
	agents, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	s.deps = dispatchDeps{
		log: log, nc: cfg.Conn.NC, builds: builds, buildsKV: kv, agentsKV: agents,
		routing: cfg.Routing, assignTimeout: cfg.AssignTimeout, now: cfg.Now,
		track: s.track, assigned: s.eventAsync,
	}
	s.d = newDispatcher(s.deps)
	return s, nil
}

// Run campaigns for the leadership and, while it holds it, schedules:
// state recovered from KV, intake consumed, pulls answered, leases swept.
// Losing the leadership stops the scheduling until it is won back; ending
// ctx resigns it so a standby takes over at once.
func (s *Scheduler) Run(ctx context.Context) error {
	el, err := newElector(ctx, s.cfg.Conn.JS, s.cfg.LeaderLease, s.cfg.Now)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it could campaign
		}
		return err
	}
	defer el.Resign(context.WithoutCancel(ctx))
	// Every instance handles the agents' reports, leader or not.
	rctx, stopReports := context.WithCancel(ctx)
	reportsDone := make(chan error, 1)
	go func() { reportsDone <- s.reports.Serve(rctx) }()
	defer func() { stopReports(); <-reportsDone }()
	tick := time.NewTicker(s.cfg.LeaderLease / 3)
	defer tick.Stop()
	var term *term // the current term of office, nil while standing by
	defer func() { term.end() }()
	for {
		leader, err := el.Try(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("leader election", "err", err)
		}
		switch {
		case leader && term == nil:
			s.log.Info("leading the schedulers", "id", el.ID())
			term = s.startTerm(ctx)
		case !leader && term != nil:
			s.log.Warn("lost the scheduler leadership; standing by", "id", el.ID())
			term.end()
			term = nil
		}
		var ended chan error
		if term != nil {
			ended = term.done
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-ended:
			term = nil
			if ctx.Err() == nil && err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
		case <-tick.C:
		}
	}
}

// term is one term of office: the scheduling goroutine and how to end it.
type term struct {
	cancel context.CancelFunc
	done   chan error
}

func (s *Scheduler) startTerm(ctx context.Context) *term {
	lctx, cancel := context.WithCancel(ctx)
	t := &term{cancel: cancel, done: make(chan error, 1)}
	go func() { t.done <- s.lead(lctx) }()
	return t
}

// end stops the term and waits for its goroutine; nil is a no-op.
func (t *term) end() {
	if t == nil {
		return
	}
	t.cancel()
	<-t.done
}

// lead schedules until ctx ends, from state rebuilt from KV, and cancels
// builds whose timeout passed.
func (s *Scheduler) lead(ctx context.Context) error {
	schedulerLeader.Set(1)
	defer func() { schedulerLeader.Set(0); queueDepth.Set(0) }()
	s.mu.Lock()
	s.leased = map[string]time.Time{}
	s.deadlines = map[string]time.Time{}
	s.mu.Unlock()
	s.d = newDispatcher(s.deps)
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return s.d.run(ctx) })
	// The records may be unreadable for a while (a NATS node lost, the
	// buckets electing leaders): a term that cannot recover its state
	// waits for them, it does not give up the process.
	for {
		err := s.recoverState(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("recover scheduler state; trying again", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	eg.Go(func() error { return s.d.watchAgents(ctx) })
	eg.Go(func() error { return s.consumeIntake(ctx) })
	eg.Go(func() error { return s.servePulls(ctx) })
	eg.Go(func() error { return s.sweep(ctx) })
	eg.Go(func() error { return s.watchBuilds(ctx) })
	eg.Go(func() error { return s.enforceTimeouts(ctx) })
	err := eg.Wait()
	select { // the events of the term's last assignments
	case <-s.async.PublishAsyncComplete():
	case <-time.After(asyncDrain):
		s.log.Warn("build events not acknowledged when the term ended", "pending", s.async.PublishAsyncPending())
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// recoverState rebuilds the queue and the leased set from the records.
func (s *Scheduler) recoverState(ctx context.Context) error {
	all, err := s.builds.List(ctx)
	if err != nil {
		return fmt.Errorf("recover scheduler state: %w", err)
	}
	var queued, leased, learnt int
	var parents []*kilnv1.Build
	for i := len(all) - 1; i >= 0; i-- { // oldest first
		b := all[i]
		s.noteDeadline(b)
		switch b.State {
		case kilnv1.BuildState_BUILD_STATE_QUEUED:
			if isParent(b) && !indexing(b) {
				parents = append(parents, b) // split below, once the queue is rebuilt
				continue
			}
			s.d.send(ctx, event{enqueue: b})
			queued++
		case kilnv1.BuildState_BUILD_STATE_ASSIGNED, kilnv1.BuildState_BUILD_STATE_RUNNING:
			if isParent(b) && !indexing(b) {
				parents = append(parents, b) // holds no lease: its children say how it is
				continue
			}
			s.track(b.Id, b.GetLeaseExpiresAt())
			s.d.send(ctx, event{leased: b})
			leased++
		case kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
			// The lineages' costs and registry caches (costs.go), from
			// the successes among the newest maxRecoveredCosts records;
			// not under lease, so the dispatcher only learns from them.
			if i < maxRecoveredCosts && b.GetAffinity().GetLineage() != "" {
				s.d.send(ctx, event{released: b.Id, ended: b})
				learnt++
			}
		}
	}
	for _, p := range parents {
		s.recoverParent(ctx, p)
	}
	s.log.Info("scheduler state recovered", "queued", queued, "leased", leased, "costs_learnt_from", learnt, "multi_platform", len(parents))
	return nil
}

// maxRecoveredCosts bounds the finished builds a new leader learns its
// lineages' costs from (the newest).
const maxRecoveredCosts = 20_000

// eachPut calls fn with every value a KV watcher reports put, until ctx
// ends or the watch does; the nil entry that marks the end of a watch's
// initial values and deletes are skipped. It stops w.
func eachPut(ctx context.Context, w jetstream.KeyWatcher, what string, fn func(jetstream.KeyValueEntry)) error {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("%s watch ended", what)
			}
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				fn(e)
			}
		}
	}
}

// servePulls hands agents' WorkOffers and withdrawals to the dispatcher.
func (s *Scheduler) servePulls(ctx context.Context) error {
	sub, err := s.cfg.Conn.NC.QueueSubscribe(bus.PullSubject(">"), "kiln-scheduler", func(msg *nats.Msg) { s.d.onPull(ctx, msg) })
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.PullSubject(">"), err)
	}
	defer sub.Unsubscribe()
	// Every scheduler hears withdrawals: the agent's pulls may wait on any.
	// The agent is the one the subject names (its credential allows only
	// its own).
	wsub, err := s.cfg.Conn.NC.Subscribe(bus.WithdrawSubject(">"), func(msg *nats.Msg) {
		if agent, ok := bus.AgentFromSubject(msg.Subject); ok {
			s.d.send(ctx, event{withdraw: agent})
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.WithdrawSubject(">"), err)
	}
	defer wsub.Unsubscribe()
	<-ctx.Done()
	return ctx.Err()
}

var errNotQueued = errors.New("build is no longer queued")

// eventAsync appends a state change to b's event log without waiting for
// the stream's acknowledgement (see Scheduler.async).
func (s *Scheduler) eventAsync(b *kilnv1.Build, sc *kilnv1.StateChanged) {
	msg, err := bus.NewMsg(bus.EventsSubject(b.Id), &kilnv1.BuildEvent{
		Time: timestamppb.New(s.cfg.Now()), BuildId: b.Id, Attempt: b.Attempt, Event: &kilnv1.BuildEvent_State{State: sc},
	})
	if err == nil {
		_, err = s.async.PublishMsgAsync(msg)
	}
	if err != nil {
		s.log.Error("publish build event", "build_id", b.Id, "err", err)
	}
}

func (s *Scheduler) event(ctx context.Context, b *kilnv1.Build, sc *kilnv1.StateChanged) {
	if err := bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
		BuildId: b.Id, Attempt: b.Attempt, Event: &kilnv1.BuildEvent_State{State: sc},
	}); err != nil {
		s.log.Error("publish build event", "build_id", b.Id, "err", err)
	}
}
