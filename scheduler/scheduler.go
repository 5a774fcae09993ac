// Package scheduler hands queued builds to agents. The build record in KV
// KILN_BUILDS is the source of truth; the scheduler keeps only derived state
// (the queue, the set of builds under lease) and rebuilds it from KV when it
// starts, so a restart loses nothing.
//
//	gateway ──kiln.requests──▶ intake ──▶ queue ──▶ pull responder ◀──kiln.sched.pull── agents
//	                                        ▲             │ QUEUED → ASSIGNED (CAS)
//	                                        └── sweeper ◀─┘ lease lapsed → QUEUED, attempt+1 on next assignment
//
// Routing is first-in, first-out in this version.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/queue"
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
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Defaults for zero Config fields.
const (
	DefaultLease         = 30 * time.Second
	DefaultAssignTimeout = 15 * time.Second
	DefaultMaxAttempts   = 3
	DefaultSweepEvery    = time.Second
	maxPollWait          = 60 * time.Second
	// replyMargin keeps the answer inside the agent's request timeout.
	replyMargin = 500 * time.Millisecond
)

// Scheduler queues builds and answers agents' pulls.
type Scheduler struct {
	cfg    Config
	log    *slog.Logger
	builds *buildstore.Store
	queue  *queue.FIFO

	mu      sync.Mutex
	leased  map[string]struct{}                         // builds ASSIGNED or RUNNING
	waiting map[string]map[*nats.Msg]context.CancelFunc // agent → its pulls waiting for work
}

// New binds a Scheduler to the farm's NATS resources (bus.Setup must have run).
func New(ctx context.Context, cfg Config) (*Scheduler, error) {
	builds, err := buildstore.Open(ctx, cfg.Conn.JS)
	if err != nil {
		return nil, err
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
	return &Scheduler{cfg: cfg, log: cfg.Logger, builds: builds, queue: queue.NewFIFO(),
		leased: map[string]struct{}{}, waiting: map[string]map[*nats.Msg]context.CancelFunc{}}, nil
}

// QueueLen is the number of builds waiting for an agent.
func (s *Scheduler) QueueLen() int { return s.queue.Len() }

// Run recovers state from KV, then consumes intake, answers pulls and
// sweeps leases until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	if err := s.recoverState(ctx); err != nil {
		return err
	}
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return s.consumeIntake(ctx) })
	eg.Go(func() error { return s.servePulls(ctx) })
	eg.Go(func() error { return s.sweep(ctx) })
	err := eg.Wait()
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
	var queued, leased int
	for i := len(all) - 1; i >= 0; i-- { // oldest first
		b := all[i]
		switch b.State {
		case kilnv1.BuildState_BUILD_STATE_QUEUED:
			s.queue.Push(b.Id)
			queued++
		case kilnv1.BuildState_BUILD_STATE_ASSIGNED, kilnv1.BuildState_BUILD_STATE_RUNNING:
			s.track(b.Id)
			leased++
		}
	}
	s.log.Info("scheduler state recovered", "queued", queued, "leased", leased)
	return nil
}

func (s *Scheduler) track(id string) {
	s.mu.Lock()
	s.leased[id] = struct{}{}
	s.mu.Unlock()
}

func (s *Scheduler) untrack(id string) {
	s.mu.Lock()
	delete(s.leased, id)
	s.mu.Unlock()
}

// consumeIntake moves new builds from KILN_REQUESTS into the queue.
func (s *Scheduler) consumeIntake(ctx context.Context) error {
	cons, err := s.cfg.Conn.JS.CreateOrUpdateConsumer(ctx, bus.StreamRequests, jetstream.ConsumerConfig{
		Durable:   "kiln-scheduler",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("intake consumer: %w", err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		req := &kilnv1.BuildRequested{}
		if err := bus.Decode(msg.Data(), req); err != nil || !buildstore.ValidID(req.BuildId) {
			s.log.Error("dropping malformed intake message", "err", err)
			_ = msg.Term()
			return
		}
		s.queue.Push(req.BuildId)
		_ = msg.Ack()
	})
	if err != nil {
		return fmt.Errorf("consume intake: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return ctx.Err()
}

// servePulls answers agents' long-poll WorkOffers, each in its own
// goroutine so one waiting agent does not hold up another.
func (s *Scheduler) servePulls(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	sub, err := s.cfg.Conn.NC.QueueSubscribe(bus.SubjectPull, "kiln-scheduler", func(msg *nats.Msg) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.answerPull(ctx, msg)
		}()
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SubjectPull, err)
	}
	defer sub.Unsubscribe()
	// Every scheduler hears withdrawals: the agent's pulls may wait on any.
	wsub, err := s.cfg.Conn.NC.Subscribe(bus.SubjectWithdraw, func(msg *nats.Msg) {
		offer := &kilnv1.WorkOffer{}
		if err := bus.Decode(msg.Data, offer); err == nil {
			s.withdraw(offer.Agent)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SubjectWithdraw, err)
	}
	defer wsub.Unsubscribe()
	<-ctx.Done()
	return ctx.Err()
}

// withdraw ends every pull the agent has waiting, unanswered.
func (s *Scheduler) withdraw(agent string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cancel := range s.waiting[agent] {
		cancel()
	}
	delete(s.waiting, agent)
}

// wait registers a pull as waiting; the returned func unregisters it.
func (s *Scheduler) wait(agent string, msg *nats.Msg, cancel context.CancelFunc) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting[agent] == nil {
		s.waiting[agent] = map[*nats.Msg]context.CancelFunc{}
	}
	s.waiting[agent][msg] = cancel
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.waiting[agent], msg)
		if len(s.waiting[agent]) == 0 {
			delete(s.waiting, agent)
		}
	}
}

func (s *Scheduler) answerPull(ctx context.Context, msg *nats.Msg) {
	offer := &kilnv1.WorkOffer{}
	if err := bus.Decode(msg.Data, offer); err != nil || offer.Agent == "" {
		s.log.Warn("ignoring malformed work offer", "err", err)
		return
	}
	wait := min(max(offer.GetWait().AsDuration()-replyMargin, 0), maxPollWait)
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	withdrawn, stopWithdraw := context.WithCancel(context.Background())
	defer stopWithdraw()
	defer s.wait(offer.Agent, msg, stopWithdraw)()
	stop := context.AfterFunc(withdrawn, cancel)
	defer stop()
	resp := &kilnv1.WorkAssignment{}
	for offer.FreeSlots > 0 && len(resp.Builds) < int(offer.FreeSlots) {
		pctx := wctx
		if len(resp.Builds) > 0 {
			pctx = ctx // got one already: take more only if queued now
		}
		id, err := s.queue.Pop(pctx)
		if err != nil {
			break
		}
		if withdrawn.Err() != nil {
			s.queue.Push(id) // the agent left while the id was being popped
			return
		}
		b, err := s.assign(ctx, id, offer.Agent)
		if err != nil {
			s.log.Error("assign build", "build_id", id, "err", err)
			continue
		}
		if b != nil {
			resp.Builds = append(resp.Builds, b)
		}
		if len(resp.Builds) > 0 && s.queue.Len() == 0 {
			break
		}
	}
	if (ctx.Err() != nil || withdrawn.Err() != nil) && len(resp.Builds) == 0 {
		return
	}
	reply, err := bus.NewMsg(msg.Reply, resp)
	if err == nil {
		err = s.cfg.Conn.NC.PublishMsg(reply)
	}
	if err != nil {
		// The lease brings the builds back if the agent never hears of them.
		s.log.Error("reply to work offer", "agent", offer.Agent, "err", err)
	}
}

var errNotQueued = errors.New("build is no longer queued")

// assign gives a queued build to agent. It returns nil, nil if the build
// left the queue meanwhile (cancelled).
func (s *Scheduler) assign(ctx context.Context, id, agent string) (*kilnv1.Build, error) {
	now := s.cfg.Now()
	b, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		if b.State != kilnv1.BuildState_BUILD_STATE_QUEUED {
			return errNotQueued
		}
		b.State = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		b.Agent = agent
		b.Attempt++
		b.LeaseExpiresAt = timestamppb.New(now.Add(s.cfg.AssignTimeout))
		return nil
	})
	if errors.Is(err, errNotQueued) || errors.Is(err, buildstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s.track(id)
	s.event(ctx, b, &kilnv1.StateChanged{
		State: b.State, Agent: agent, Attempt: b.Attempt,
		Message: fmt.Sprintf("assigned to agent %q (attempt %d, first in first out)", agent, b.Attempt),
	})
	s.log.Info("build assigned", "build_id", id, "agent", agent, "attempt", b.Attempt)
	return b, nil
}

func (s *Scheduler) event(ctx context.Context, b *kilnv1.Build, sc *kilnv1.StateChanged) {
	if err := bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
		BuildId: b.Id, Attempt: b.Attempt, Event: &kilnv1.BuildEvent_State{State: sc},
	}); err != nil {
		s.log.Error("publish build event", "build_id", b.Id, "err", err)
	}
}

// sweep re-queues builds whose agent stopped renewing the lease, and fails
// those that have lost MaxAttempts agents.
func (s *Scheduler) sweep(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		s.mu.Lock()
		ids := make([]string, 0, len(s.leased))
		for id := range s.leased {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		for _, id := range ids {
			if err := s.checkLease(ctx, id); err != nil && ctx.Err() == nil {
				s.log.Error("check lease", "build_id", id, "err", err)
			}
		}
	}
}

func (s *Scheduler) checkLease(ctx context.Context, id string) error {
	now := s.cfg.Now()
	cur, _, err := s.builds.Get(ctx, id)
	if errors.Is(err, buildstore.ErrNotFound) || (err == nil && !leased(cur.State)) {
		s.untrack(id) // finished, cancelled or handed back
		return nil
	}
	if err != nil || !lapsed(cur, now) {
		return err
	}
	var lostAgent string
	b, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		if !leased(b.State) || !lapsed(b, now) {
			return errNotLeased
		}
		lostAgent = b.Agent
		b.Agent = ""
		b.LeaseExpiresAt = nil
		if b.Attempt >= s.cfg.MaxAttempts {
			b.State = kilnv1.BuildState_BUILD_STATE_FAILED
			b.FinishedAt = timestamppb.New(now)
			b.Error = fmt.Sprintf("build lost its agent %d times (last: %q stopped renewing its lease); giving up", b.Attempt, lostAgent)
		} else {
			b.State = kilnv1.BuildState_BUILD_STATE_QUEUED
		}
		return nil
	})
	if errors.Is(err, errNotLeased) {
		return nil // renewed or finished meanwhile; the next sweep looks again
	}
	if err != nil {
		return err
	}
	s.untrack(id)
	if b.State == kilnv1.BuildState_BUILD_STATE_FAILED {
		s.log.Warn("build failed: agents lost", "build_id", id, "attempts", b.Attempt)
		if err := bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
			BuildId: id, Attempt: b.Attempt,
			Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: b.State, Error: b.Error}},
		}); err != nil {
			return err
		}
		return nil
	}
	s.event(ctx, b, &kilnv1.StateChanged{
		State: b.State, Attempt: b.Attempt,
		Message: fmt.Sprintf("agent %q stopped renewing its lease; re-queued", lostAgent),
	})
	s.queue.Push(id)
	s.log.Warn("lease lapsed; build re-queued", "build_id", id, "agent", lostAgent, "attempt", b.Attempt)
	return nil
}

var errNotLeased = errors.New("not under a lapsed lease")

func leased(st kilnv1.BuildState) bool {
	return st == kilnv1.BuildState_BUILD_STATE_ASSIGNED || st == kilnv1.BuildState_BUILD_STATE_RUNNING
}

func lapsed(b *kilnv1.Build, now time.Time) bool {
	return b.LeaseExpiresAt == nil || !now.Before(b.LeaseExpiresAt.AsTime())
}
