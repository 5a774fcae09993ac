package agentproto

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// ErrDrained is the cause of the context a build runs in when the worker
// stopped and the build did not finish within Worker.DrainTimeout.
var ErrDrained = errors.New("agent drained before the build finished")

// Worker is the loop around the Client every agent runs, real or
// simulated: Slots slots each pull (one WorkOffer per free slot), run what
// they are handed and pull again, backing off after a failed pull; a
// heartbeat in KV KILN_AGENTS under the agent's own key (the only one its
// credential may write) every HeartbeatEvery; and on stopping, the
// waiting pulls withdrawn, a DRAINING heartbeat, the running builds given
// DrainTimeout, and the heartbeat deleted. An admin's drain holds the
// slots (Hold). The caller supplies what differs: how a build runs and
// what the heartbeat says of the engine.
type Worker struct {
	Client *Client
	// Agents is KV KILN_AGENTS.
	Agents jetstream.KeyValue
	Slots  int
	// PollWait is how long one pull may wait for work.
	PollWait time.Duration
	// HeartbeatEvery is how often the heartbeat is written (and Tick called).
	HeartbeatEvery time.Duration
	// DrainTimeout is how long running builds may go on after Run's
	// context ends; then their context ends with cause ErrDrained.
	DrainTimeout time.Duration
	// Build runs one assigned build; work outlives Run's context by
	// DrainTimeout.
	Build func(work context.Context, b *kilnv1.Build)
	// Record returns the heartbeat's record as the caller knows it
	// (engine, labels, cache summary, builders; state READY or UNHEALTHY).
	// The worker sets the name, slots, busy slots and last-seen time, the
	// start time unless set (its first heartbeat), and DRAINING while stopping or held. Nil: a READY record.
	Record func() *kilnv1.Agent
	// Healthy says whether the slots may pull; while it says no, they
	// wait a second between looks. Nil: always.
	Healthy func() bool
	// Tick is called every HeartbeatEvery before the heartbeat (the agent
	// pings its engine). Optional.
	Tick func(ctx context.Context)
	// Pulled hears of every pull once it returned: when it was sent, and
	// what it brought. Optional.
	Pulled func(sent time.Time, builds []*kilnv1.Build, err error)
	Logger *slog.Logger

	startOnce sync.Once
	started   time.Time
	busy      atomic.Int32
	draining  atomic.Bool
	hold      hold
	// hbMu orders heartbeat writes, so one that read the state before a
	// drain cannot land after the drain's own.
	hbMu sync.Mutex
}

// Busy is how many slots run a build.
func (w *Worker) Busy() int { return int(w.busy.Load()) }

// Held reports whether an admin's drain holds the slots.
func (w *Worker) Held() bool { return w.hold.held() }

// Hold turns an admin's drain on or off: while on, the slots start no
// pull and the pulls waiting when it came on are cancelled (running
// builds go on). Turning it on returns once those pulls have returned;
// the caller then writes the heartbeat and withdraws (Withdraw), in that
// order. Calls must not overlap.
func (w *Worker) Hold(on bool) { w.hold.set(on) }

// Withdraw takes back the agent's waiting pulls, logging a failure.
func (w *Worker) Withdraw() {
	if err := w.Client.Withdraw(); err != nil {
		w.logger().Warn("withdraw pulls", "err", err)
	}
}

func (w *Worker) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.Default()
	}
	return w.Logger
}

// Run works the slots and heartbeats until ctx ends, then drains (see
// Worker) and deletes the heartbeat. Call Heartbeat first if the farm
// should see the agent before Run starts its goroutines.
func (w *Worker) Run(ctx context.Context) {
	// work outlives ctx by DrainTimeout so running builds may finish.
	work, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(nil)
	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done() // before the slots return
		w.draining.Store(true)
		w.Withdraw()
		_, _ = w.Heartbeat(work)
		t := time.NewTimer(w.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			stopWork(ErrDrained)
		case <-work.Done():
		}
	})
	hbCtx, stopHB := context.WithCancel(work)
	wg.Go(func() { w.heartbeatLoop(hbCtx) })
	var slots sync.WaitGroup
	for range w.Slots {
		slots.Go(func() { w.slotLoop(ctx, work) })
	}
	slots.Wait()
	stopHB()
	stopWork(nil)
	wg.Wait()
	// Leave the registry at once rather than waiting for the TTL.
	_ = w.Agents.Delete(context.Background(), w.Client.Agent())
}

// slotLoop is one build slot: pull, run, repeat until ctx ends.
func (w *Worker) slotLoop(ctx, work context.Context) {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if backoff > 0 || (w.Healthy != nil && !w.Healthy()) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(max(backoff, time.Second)):
			}
		}
		pctx, done, ok := w.hold.startPull(ctx)
		if !ok {
			return
		}
		sent := time.Now()
		builds, err := w.Client.Pull(pctx, w.PollWait)
		held := pctx.Err() != nil && ctx.Err() == nil
		done()
		if w.Pulled != nil {
			w.Pulled(sent, builds, err)
		}
		if err != nil {
			if held {
				continue // drained while pulling: wait for the undrain
			}
			if ctx.Err() == nil {
				w.logger().Debug("pull for work", "err", err)
			}
			backoff = min(max(2*backoff, 250*time.Millisecond), 5*time.Second)
			continue
		}
		backoff = 0
		for _, b := range builds {
			w.busy.Add(1)
			w.Build(work, b)
			w.busy.Add(-1)
		}
	}
}

func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.HeartbeatEvery)
	defer t.Stop()
	for {
		_, _ = w.Heartbeat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if w.Tick != nil {
				w.Tick(ctx)
			}
		}
	}
}

// Heartbeat writes the agent's record to KV KILN_AGENTS, under its own
// name, and returns it; a failure is logged too.
func (w *Worker) Heartbeat(ctx context.Context) (*kilnv1.Agent, error) {
	w.startOnce.Do(func() { w.started = time.Now() })
	w.hbMu.Lock()
	defer w.hbMu.Unlock()
	rec := &kilnv1.Agent{State: kilnv1.AgentState_AGENT_STATE_READY}
	if w.Record != nil {
		rec = w.Record()
	}
	rec.Name, rec.Slots, rec.BusySlots = w.Client.Agent(), uint32(w.Slots), uint32(w.busy.Load())
	if rec.StartedAt == nil {
		rec.StartedAt = timestamppb.New(w.started)
	}
	rec.LastSeen = timestamppb.Now()
	if w.draining.Load() || w.hold.held() {
		rec.State = kilnv1.AgentState_AGENT_STATE_DRAINING
	}
	data, err := proto.Marshal(rec)
	if err == nil {
		_, err = w.Agents.Put(ctx, rec.Name, data)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.logger().Warn("heartbeat", "err", err)
		}
		return rec, fmt.Errorf("heartbeat: %w", err)
	}
	return rec, nil
}
