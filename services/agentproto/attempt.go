package agentproto

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// Batching of an attempt's events: a batch goes when FlushEvery has passed
// since its first event or it holds MaxBatch events or MaxBatchBytes.
const (
	FlushEvery    = 50 * time.Millisecond
	MaxBatch      = 128
	MaxBatchBytes = 256 << 10
	// maxPending and maxPendingBytes bound the events waiting to be sent;
	// past either Event waits for the scheduler, so a slow farm slows the
	// build's output, not the agent's memory.
	maxPending      = 8192
	maxPendingBytes = 16 * MaxBatchBytes
	// sendTimeout bounds one report, tries included.
	sendTimeout = 30 * time.Second
)

// Hooks are told what happens to an attempt's reports in the background.
type Hooks struct {
	// Fenced is called once when the schedulers refuse a report because
	// the build is no longer this attempt's: stop the build.
	Fenced func(error)
	// Failed is called when a batch of events could not be sent.
	Failed func(error)
}

// Attempt is one attempt of a build on this agent. Its reports go one at a
// time, in the order they were made, and its events are batched; Finish or
// HandBack sends the last batch with the end. Methods are safe for
// concurrent use.
type Attempt struct {
	c       *Client
	id      string
	attempt uint32
	ctx     context.Context // the reports outlive the build's cancellation
	hooks   Hooks

	sending sync.Mutex // held while a report with events is in flight

	mu           sync.Mutex
	cond         *sync.Cond // pending shrank, or the attempt ended
	pending      []*kilnv1.BuildEvent
	pendingBytes int    // proto.Size of the pending events
	seq          uint64 // the last report's sequence
	fenced       error
	closed       bool
	kick, full   chan struct{}
	stop, done   chan struct{}
	stopOnce     sync.Once
	fencedCalled bool

	// The attempt's log text: the limit of its tenant, how much Event
	// took (past the limit it takes no more log lines: the scheduler
	// cuts the log at the first line past it), and how much the reports
	// sent so far carried (AgentReport.log_bytes). Guarded by mu.
	logLimit, logTaken, logSent uint64
}

// Start tells the schedulers the agent runs assigned (ASSIGNED → RUNNING,
// a lease of lease) and returns the attempt and the record as written;
// buildstore.ErrFenced means the build is not the agent's (any more).
func (c *Client) Start(ctx context.Context, assigned *kilnv1.Build, lease time.Duration, hooks Hooks) (*Attempt, *kilnv1.Build, error) {
	a := &Attempt{
		c: c, id: assigned.Id, attempt: assigned.Attempt, ctx: context.WithoutCancel(ctx), hooks: hooks, seq: 1,
		kick: make(chan struct{}, 1), full: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	a.cond = sync.NewCond(&a.mu)
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	b, err := c.report(sctx, &kilnv1.AgentReport{
		BuildId: a.id, Attempt: a.attempt, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_START,
		Lease: durationpb.New(lease), Sequence: a.seq,
	})
	if err != nil {
		return nil, nil, err
	}
	a.logLimit = LogLimit(b.GetPolicy())
	go a.flushLoop()
	return a, b, nil
}

// Event queues ev for the build's log: log lines, steps and pushed images
// (the schedulers write state and finished events themselves). It waits
// only when maxPending events or maxPendingBytes are already waiting. Log
// lines past the one that passes the attempt's log limit are dropped: the
// scheduler would drop them.
func (a *Attempt) Event(ev *kilnv1.BuildEvent) {
	ev.BuildId, ev.Attempt = a.id, a.attempt
	size := proto.Size(ev)
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.pending) > 0 && (len(a.pending) >= maxPending || a.pendingBytes+size > maxPendingBytes) && !a.closed && a.fenced == nil {
		a.cond.Wait()
	}
	if a.closed || a.fenced != nil {
		return
	}
	if ev.GetLog() != nil {
		if a.logTaken > a.logLimit {
			return
		}
		a.logTaken += logBytes(ev)
	}
	a.pending = append(a.pending, ev)
	a.pendingBytes += size
	signal(a.kick)
	if len(a.pending) >= MaxBatch {
		signal(a.full)
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Renew extends the lease and returns the record (its CancelRequested
// says whether to stop); it also fences a push. buildstore.ErrFenced means
// another attempt owns the build.
func (a *Attempt) Renew(ctx context.Context, lease time.Duration) (*kilnv1.Build, error) {
	b, err := a.c.report(ctx, &kilnv1.AgentReport{
		BuildId: a.id, Attempt: a.attempt, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_RENEW, Lease: durationpb.New(lease),
	})
	if errors.Is(err, buildstore.ErrFenced) {
		a.setFenced(err)
	}
	return b, err
}

// Finish sends the events still waiting and records how the build ended;
// the schedulers publish the finished event. It returns the final record.
func (a *Attempt) Finish(ctx context.Context, state kilnv1.BuildState, result *kilnv1.BuildResult, errMsg string) (*kilnv1.Build, error) {
	return a.end(ctx, &kilnv1.AgentReport{
		Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH, State: state, Result: result, Error: errMsg,
	})
}

// AfterFinish appends ev to the log of the build this attempt finished:
// the automatic warm start's cache export (a BuildEvent.cache of kind
// EXPORT with automatic set), which runs after the build's result is
// recorded. Call it after Finish returned the SUCCEEDED record; it sends at
// once, without batching, and returns the schedulers' answer. The
// schedulers append it after the finished event (watchers following live
// have stopped there; a replay shows it) and, when ev carries no error,
// record its ref as the build's warm_cache_ref, which routing counts as a
// registry cache for the build's lineage. buildstore.ErrFenced means the
// build is not this attempt's success (it did not succeed, or another
// attempt finished it). Any other event after Finish is still dropped.
func (a *Attempt) AfterFinish(ctx context.Context, ev *kilnv1.BuildEvent) error {
	if err := AfterFinishEvent(ev); err != nil {
		return err
	}
	ev.BuildId, ev.Attempt = a.id, a.attempt
	a.sending.Lock()
	defer a.sending.Unlock()
	a.mu.Lock()
	if !a.closed {
		a.mu.Unlock()
		return errors.New("AfterFinish before Finish: the automatic cache export comes after the build's result")
	}
	if a.fenced != nil {
		err := a.fenced
		a.mu.Unlock()
		return err
	}
	a.seq++
	r := &kilnv1.AgentReport{
		BuildId: a.id, Attempt: a.attempt, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS,
		Sequence: a.seq, LogBytes: a.logSent, Events: []*kilnv1.BuildEvent{ev},
	}
	a.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	_, err := a.c.report(sctx, r)
	return err
}

// AfterFinishEvent checks that ev may follow its build's finished event:
// only the automatic warm start's cache export may.
func AfterFinishEvent(ev *kilnv1.BuildEvent) error {
	c := ev.GetCache()
	if c == nil || c.GetKind() != kilnv1.CacheEvent_KIND_EXPORT || !c.GetAutomatic() {
		return fmt.Errorf("only the automatic cache export (a cache event of kind EXPORT, automatic) may follow a build's finish, not %T", ev.GetEvent())
	}
	return nil
}

// HandBack sends the events still waiting and returns the build to the
// queue, saying why.
func (a *Attempt) HandBack(ctx context.Context, why string) error {
	_, err := a.end(ctx, &kilnv1.AgentReport{Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_HAND_BACK, Message: why})
	return err
}

// Abandon drops the events still waiting and sends nothing more: another
// attempt owns the build.
func (a *Attempt) Abandon() {
	a.stopFlushing()
	a.mu.Lock()
	a.closed, a.pending = true, nil
	a.cond.Broadcast()
	a.mu.Unlock()
}

// end stops the background batches and sends r with the last events (in
// batches of their own first when they are many).
func (a *Attempt) end(ctx context.Context, r *kilnv1.AgentReport) (*kilnv1.Build, error) {
	a.stopFlushing()
	a.sending.Lock()
	defer a.sending.Unlock()
	for {
		a.mu.Lock()
		if a.fenced != nil {
			err := a.fenced
			a.closed, a.pending = true, nil
			a.cond.Broadcast()
			a.mu.Unlock()
			return nil, err
		}
		batch, rest := a.take()
		if rest > 0 {
			a.mu.Unlock()
			a.send(ctx, &kilnv1.AgentReport{Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS}, batch)
			continue
		}
		a.closed = true
		a.cond.Broadcast()
		a.mu.Unlock()
		return a.send(ctx, r, batch)
	}
}

func (a *Attempt) stopFlushing() {
	a.stopOnce.Do(func() { close(a.stop) })
	<-a.done
}

// flushLoop sends the batches until the attempt ends.
func (a *Attempt) flushLoop() {
	defer close(a.done)
	for {
		select {
		case <-a.kick:
		case <-a.stop:
			return
		}
		t := time.NewTimer(FlushEvery)
		select {
		case <-t.C:
		case <-a.full:
		case <-a.stop:
		}
		t.Stop()
		a.flush()
	}
}

// flush sends every batch waiting.
func (a *Attempt) flush() {
	a.sending.Lock()
	defer a.sending.Unlock()
	for {
		a.mu.Lock()
		if a.fenced != nil || a.closed {
			a.mu.Unlock()
			return
		}
		batch, _ := a.take()
		a.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		a.send(a.ctx, &kilnv1.AgentReport{Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS}, batch)
	}
}

// take removes one batch from the pending events and says how many are
// left. Lock held.
func (a *Attempt) take() (batch []*kilnv1.BuildEvent, rest int) {
	n, size := 0, 0
	for n < len(a.pending) && n < MaxBatch {
		s := proto.Size(a.pending[n])
		if n > 0 && size+s > MaxBatchBytes {
			break
		}
		size += s
		n++
	}
	batch = a.pending[:n:n]
	a.pending = a.pending[n:]
	a.pendingBytes = max(a.pendingBytes-size, 0)
	if len(a.pending) == 0 {
		a.pending, a.pendingBytes = nil, 0
	}
	a.cond.Broadcast()
	return batch, len(a.pending)
}

// send sends one report of the attempt with events; a.sending is held.
func (a *Attempt) send(ctx context.Context, r *kilnv1.AgentReport, events []*kilnv1.BuildEvent) (*kilnv1.Build, error) {
	a.mu.Lock()
	a.seq++
	r.Sequence, r.LogBytes = a.seq, a.logSent
	for _, ev := range events {
		a.logSent += logBytes(ev)
	}
	a.mu.Unlock()
	r.BuildId, r.Attempt, r.Events = a.id, a.attempt, events
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	b, err := a.c.report(sctx, r)
	switch {
	case errors.Is(err, buildstore.ErrFenced):
		a.setFenced(err)
	case err != nil && r.Kind == kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS && a.hooks.Failed != nil:
		a.hooks.Failed(err)
	}
	return b, err
}

// setFenced records that the build is no longer this attempt's, drops what
// waits and tells the hook once.
func (a *Attempt) setFenced(err error) {
	a.mu.Lock()
	if a.fenced == nil {
		a.fenced = err
	}
	a.pending = nil
	a.cond.Broadcast()
	call := !a.fencedCalled && a.hooks.Fenced != nil
	a.fencedCalled = true
	a.mu.Unlock()
	if call {
		a.hooks.Fenced(err)
	}
}
