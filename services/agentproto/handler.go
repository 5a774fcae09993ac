package agentproto

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// Handler is the schedulers' side of the reports: an agent's NATS
// credential cannot write KV KILN_BUILDS nor publish to KILN_EVENTS, so
// every change to its build is a report, and the handler writes a report's
// change and events only when the record names the agent the subject names,
// at the report's attempt, in a state that allows it:
//
//	kiln.agent.report.<agent> ─▶ fence(agent, attempt, state) ─▶ KV CAS ─▶ events (in order, log cut at the tenant's limit, acknowledged) ─▶ reply
//
// A report the fence refuses writes nothing and answers fenced. Every
// scheduler instance runs one, leader or not: each change is a revision
// compare-and-swap on the record.
type Handler struct {
	cfg    HandlerConfig
	builds *buildstore.Store
	async  jetstream.JetStream
}

// HandlerConfig wires a Handler.
type HandlerConfig struct {
	Conn   *bus.Conn
	Logger *slog.Logger
	// Lease is the longest lease a report gets (DefaultLease when 0).
	Lease time.Duration
	// Now is the clock of lease expiries (time.Now when nil): the
	// scheduler's, which sweeps them.
	Now func() time.Time
	// Refused is called for each report the fence refuses (metrics).
	Refused func()
}

// NewHandler binds a Handler to the farm (bus.Setup must have run).
func NewHandler(ctx context.Context, cfg HandlerConfig) (*Handler, error) {
	builds, err := buildstore.Open(ctx, cfg.Conn.JS)
	if err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Refused == nil {
		cfg.Refused = func() {}
	}
	async, err := jetstream.New(cfg.Conn.NC, jetstream.WithPublishAsyncMaxPending(4*MaxBatch*reportWorkers))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Handler{cfg: cfg, builds: builds, async: async}, nil
}

// Report handling bounds.
const (
	// DefaultLease is the longest lease when HandlerConfig.Lease is 0, the
	// scheduler's default.
	DefaultLease = 30 * time.Second
	// reportWorkers bounds the reports handled at once per scheduler.
	reportWorkers = 64
	// maxHandBackMessage bounds the reason an agent gives for a hand back.
	maxHandBackMessage = 1024
)

// errAlready says a retried report's change is in the record already.
var errAlready = errors.New("report already applied")

// Serve handles agents' reports until ctx ends, then waits for those in
// hand.
func (h *Handler) Serve(ctx context.Context) error {
	sem := make(chan struct{}, reportWorkers)
	var wg sync.WaitGroup
	sub, err := h.cfg.Conn.NC.QueueSubscribe(bus.ReportSubject(">"), "kiln-scheduler", func(msg *nats.Msg) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h.onReport(ctx, msg)
		}()
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.ReportSubject(">"), err)
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	wg.Wait()
	return nil
}

// onReport decodes, applies and answers one report.
func (h *Handler) onReport(ctx context.Context, msg *nats.Msg) {
	reply := &kilnv1.AgentReportReply{}
	agent, ok := bus.AgentFromSubject(msg.Subject)
	r := &kilnv1.AgentReport{}
	err := bus.Decode(msg.Data, r)
	switch {
	case !ok:
		err = fmt.Errorf("report on %s: not an agent's subject", msg.Subject)
	case err != nil:
	default:
		// The agent's span (its attempt) is the parent of what this does.
		reply.Build, err = h.applyReport(telemetry.ExtractNATS(ctx, msg.Header), agent, r)
	}
	if err != nil {
		reply.Error = err.Error()
		reply.Fenced = errors.Is(err, buildstore.ErrFenced)
		level := h.cfg.Logger.Warn
		if reply.Fenced {
			h.cfg.Refused()
			level = h.cfg.Logger.Info
		}
		level("agent report refused", "agent", agent, "build_id", r.BuildId, "attempt", r.Attempt, "kind", r.Kind.String(), "err", err)
	}
	if msg.Reply == "" {
		return
	}
	out, err := bus.NewMsg(msg.Reply, reply)
	if err == nil {
		err = h.cfg.Conn.NC.PublishMsg(out)
	}
	if err != nil {
		h.cfg.Logger.Error("answer agent report", "agent", agent, "build_id", r.BuildId, "err", err)
	}
}

// applyReport makes the change r asks for on behalf of agent, if the fence
// lets it, and returns the record written (nil for EVENTS).
func (h *Handler) applyReport(ctx context.Context, agent string, r *kilnv1.AgentReport) (*kilnv1.Build, error) {
	if !buildstore.ValidID(r.BuildId) {
		return nil, fmt.Errorf("%w: no build %q", buildstore.ErrFenced, r.BuildId)
	}
	events, err := agentEvents(r)
	if err != nil {
		return nil, err
	}
	now := h.cfg.Now()
	fence := func(b *kilnv1.Build, states ...kilnv1.BuildState) error {
		for _, st := range states {
			if b.State == st && b.Agent == agent && b.Attempt == r.Attempt {
				return nil
			}
		}
		return fmt.Errorf("%w: build %s is %s on agent %q at attempt %d; report %s from agent %q at attempt %d",
			buildstore.ErrFenced, b.Id, b.State, b.Agent, b.Attempt, r.Kind, agent, r.Attempt)
	}
	const (
		assigned = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		running  = kilnv1.BuildState_BUILD_STATE_RUNNING
	)
	switch r.Kind {
	case kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS:
		// A read, not a write: a batch checked just before the build's
		// lease lapses may still land after it; its events carry their
		// attempt. Every state change, the finish included, is a CAS.
		b, _, err := h.builds.Get(ctx, r.BuildId)
		if errors.Is(err, buildstore.ErrNotFound) {
			return nil, fmt.Errorf("%w: %v", buildstore.ErrFenced, err)
		}
		if err != nil {
			return nil, err
		}
		if err := fence(b, assigned, running); err != nil {
			if !afterFinish(events) || fence(b, kilnv1.BuildState_BUILD_STATE_SUCCEEDED) != nil {
				return nil, err
			}
			return nil, h.afterFinish(ctx, r, b, events, fence)
		}
		return nil, h.publishEvents(ctx, r, b, events)

	case kilnv1.AgentReportKind_AGENT_REPORT_KIND_START:
		b, err := h.updateFenced(ctx, r.BuildId, func(b *kilnv1.Build) error {
			if fence(b, running) == nil {
				return errAlready // a retried START
			}
			if err := fence(b, assigned); err != nil {
				return err
			}
			b.State = running
			b.StartedAt = timestamppb.New(now)
			buildstore.StartAttempt(b, now)
			b.LeaseExpiresAt = timestamppb.New(now.Add(h.grantLease(r)))
			return nil
		})
		if err != nil {
			return nil, err
		}
		return b, h.publishEvents(ctx, r, b, append(events, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{
			State: b.State, Agent: agent, Attempt: b.Attempt, Message: fmt.Sprintf("running on agent %q (attempt %d)", agent, b.Attempt),
		}}}))

	case kilnv1.AgentReportKind_AGENT_REPORT_KIND_RENEW:
		if len(events) > 0 {
			return nil, errors.New("a RENEW report carries no events")
		}
		return h.updateFenced(ctx, r.BuildId, func(b *kilnv1.Build) error {
			if err := fence(b, assigned, running); err != nil {
				return err
			}
			b.LeaseExpiresAt = timestamppb.New(now.Add(h.grantLease(r)))
			return nil
		})

	case kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH:
		switch r.State {
		case kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED:
		default:
			return nil, fmt.Errorf("a build cannot finish %s", r.State)
		}
		b, err := h.updateFenced(ctx, r.BuildId, func(b *kilnv1.Build) error {
			st, why := r.State, r.Error
			if b.TimedOut && st != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
				// The farm stopped it for its timeout: however the agent
				// saw the end, the build timed out.
				st, why = kilnv1.BuildState_BUILD_STATE_CANCELLED, buildstore.TimeoutError(b)
			}
			if fence(b, st) == nil {
				return errAlready // a retried FINISH: publish again, deduplicated
			}
			if err := fence(b, running, assigned); err != nil {
				return err
			}
			b.State, b.Result, b.Error = st, r.Result, why
			b.TimedOut = b.TimedOut && st == kilnv1.BuildState_BUILD_STATE_CANCELLED
			b.FinishedAt = timestamppb.New(now)
			b.LeaseExpiresAt = nil
			buildstore.EndAttempt(b, now, buildstore.ReasonEnded(st, b.TimedOut))
			return nil
		})
		if err != nil {
			return nil, err
		}
		return b, h.publishEvents(ctx, r, b, append(events, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
			State: b.State, Result: b.Result, Error: b.Error, Agent: agent, TimedOut: b.TimedOut,
		}}}))

	case kilnv1.AgentReportKind_AGENT_REPORT_KIND_HAND_BACK:
		why := r.Message
		if len(why) > maxHandBackMessage {
			why = why[:maxHandBackMessage]
		}
		b, err := h.updateFenced(ctx, r.BuildId, func(b *kilnv1.Build) error {
			if err := fence(b, assigned, running); err != nil {
				return err
			}
			buildstore.EndAttempt(b, now, buildstore.ReasonHandedBack(why))
			b.State = kilnv1.BuildState_BUILD_STATE_QUEUED
			b.Agent = ""
			b.LeaseExpiresAt = nil
			b.QueuedAt = timestamppb.New(now)
			return nil
		})
		if err != nil {
			return nil, err
		}
		if err := h.publishEvents(ctx, r, b, append(events, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{
			State: b.State, Attempt: b.Attempt, Message: why,
		}}})); err != nil {
			return b, err
		}
		msg, err := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id})
		if err == nil {
			msg.Header.Set(nats.MsgIdHdr, fmt.Sprintf("%s-handback-%d", b.Id, b.Attempt))
			telemetry.InjectNATS(telemetry.BuildContext(ctx, b), msg.Header)
			_, err = h.cfg.Conn.JS.PublishMsg(ctx, msg)
		}
		if err != nil {
			// The record is QUEUED: the leader finds it when it recovers.
			h.cfg.Logger.Warn("hand back: intake publish failed; the scheduler recovers the build from KV on restart", "build_id", b.Id, "err", err)
		}
		h.cfg.Logger.Info("build handed back", "build_id", b.Id, "agent", agent, "attempt", b.Attempt)
		return b, nil
	}
	return nil, fmt.Errorf("unknown report kind %s", r.Kind)
}

// afterFinish appends the automatic cache export events the attempt that
// finished b SUCCEEDED sent after its finish (they follow the finished
// event in the log), then records the ref of one that worked as the
// build's warm_cache_ref: the build's record is where the schedulers learn,
// and a new leader recovers, which lineages the farm's registry holds a
// cache of.
func (h *Handler) afterFinish(ctx context.Context, r *kilnv1.AgentReport, b *kilnv1.Build, events []*kilnv1.BuildEvent, fence func(*kilnv1.Build, ...kilnv1.BuildState) error) error {
	if err := h.publishEvents(ctx, r, b, events); err != nil {
		return err
	}
	var ref string
	for _, ev := range events {
		if c := ev.GetCache(); c.GetError() == "" && c.GetRef() != "" {
			ref = c.GetRef()
		}
	}
	if ref == "" || b.GetResult().GetWarmCacheRef() == ref {
		return nil
	}
	_, err := h.builds.SetWarmCacheRef(ctx, r.BuildId, ref, func(b *kilnv1.Build) error {
		return fence(b, kilnv1.BuildState_BUILD_STATE_SUCCEEDED)
	})
	return err
}

// afterFinish reports whether events may follow their build's finish: the
// automatic cache export only (AfterFinishEvent).
func afterFinish(events []*kilnv1.BuildEvent) bool {
	for _, ev := range events {
		if AfterFinishEvent(ev) != nil {
			return false
		}
	}
	return len(events) > 0
}

// updateFenced is buildstore's Update where errAlready means the change is
// in the record already: the current record is returned.
func (h *Handler) updateFenced(ctx context.Context, id string, change func(*kilnv1.Build) error) (*kilnv1.Build, error) {
	b, err := h.builds.Update(ctx, id, change)
	if errors.Is(err, errAlready) {
		b, _, err = h.builds.Get(ctx, id)
	}
	if errors.Is(err, buildstore.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", buildstore.ErrFenced, err)
	}
	return b, err
}

// grantLease is the lease a report gets: what the agent asks, at most the
// scheduler's.
func (h *Handler) grantLease(r *kilnv1.AgentReport) time.Duration {
	if l := r.GetLease().AsDuration(); l > 0 && l < h.cfg.Lease {
		return l
	}
	return h.cfg.Lease
}

// agentEvents checks a report's events: an agent may append log lines,
// steps, pushed images and cache events; the schedulers write state and
// finished events.
func agentEvents(r *kilnv1.AgentReport) ([]*kilnv1.BuildEvent, error) {
	for i, ev := range r.Events {
		switch ev.Event.(type) {
		case *kilnv1.BuildEvent_Log, *kilnv1.BuildEvent_StepStarted, *kilnv1.BuildEvent_StepFinished, *kilnv1.BuildEvent_Pushed, *kilnv1.BuildEvent_Cache:
		default:
			return nil, fmt.Errorf("report event %d: an agent may send log, step, pushed and cache events only, not %T", i, ev.Event)
		}
	}
	return r.Events, nil
}

// publishEvents appends events to the report's build's log in order and
// waits until the stream has stored them all. Each carries a message id of
// build, attempt, report sequence and position, so a report sent again
// appends nothing twice (within the stream's duplicate window). The log
// text of the attempt past its tenant's limit (b's policy) is cut.
func (h *Handler) publishEvents(ctx context.Context, r *kilnv1.AgentReport, b *kilnv1.Build, events []*kilnv1.BuildEvent) error {
	events = cutLog(events, r.LogBytes, LogLimit(b.GetPolicy()))
	if len(events) == 0 {
		return nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	for i, ev := range events {
		ev.BuildId, ev.Attempt, ev.Sequence = r.BuildId, r.Attempt, 0
		if ev.Time == nil {
			ev.Time = timestamppb.New(time.Now())
		}
		msg, err := bus.EventMsg(ev)
		if err != nil {
			return err
		}
		if r.Sequence != 0 {
			msg.Header.Set(nats.MsgIdHdr, fmt.Sprintf("%s.%d.%d.%d", r.BuildId, r.Attempt, r.Sequence, i))
		}
		f, err := h.async.PublishMsgAsync(msg)
		if err != nil {
			return fmt.Errorf("publish events of build %s: %w", r.BuildId, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish events of build %s: %w", r.BuildId, err)
		case <-ctx.Done():
			return fmt.Errorf("publish events of build %s: %w", r.BuildId, ctx.Err())
		}
	}
	return nil
}
