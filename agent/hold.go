package agent

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// hold is an admin's drain of a running agent: while it is on, the slots
// start no pull, and the pulls waiting when it came on are cancelled.
// Builds already running are not touched. Unlike the drain that stopping
// the agent starts, it ends: undrain releases the slots.
type hold struct {
	mu     sync.Mutex
	on     atomic.Bool   // set under mu; read without it by held
	resume chan struct{} // closed when the hold ends
	// pulls is cancelled when the hold comes on; every pull started
	// while it was off derives from it. pulling counts those pulls.
	pulls     context.Context
	stopPulls context.CancelFunc
	pulling   sync.WaitGroup
}

// held reports whether the agent is drained by an admin.
func (h *hold) held() bool { return h.on.Load() }

// startPull waits while the hold is on, then returns the context of one
// pull (ended by ctx or by the hold coming on) and the func to call when
// that pull has returned. ok is false when ctx ended first.
func (h *hold) startPull(ctx context.Context) (pctx context.Context, done func(), ok bool) {
	for {
		h.mu.Lock()
		if !h.on.Load() {
			if h.pulls == nil {
				h.pulls, h.stopPulls = context.WithCancel(context.Background())
			}
			h.pulling.Add(1)
			pulls := h.pulls
			h.mu.Unlock()
			pctx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(pulls, cancel)
			return pctx, func() { stop(); cancel(); h.pulling.Done() }, true
		}
		resume := h.resume
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, nil, false
		case <-resume:
		}
	}
}

// set turns the hold on or off. Turning it on returns once every pull
// started before has returned, so a withdrawal sent after it follows them.
// Calls must not overlap (the drain subscription runs one at a time).
func (h *hold) set(on bool) {
	h.mu.Lock()
	if on == h.on.Load() {
		h.mu.Unlock()
		return
	}
	h.on.Store(on)
	if on {
		h.resume = make(chan struct{})
		if h.stopPulls != nil {
			h.stopPulls()
			h.pulls, h.stopPulls = nil, nil
		}
	} else {
		close(h.resume)
	}
	h.mu.Unlock()
	if on {
		h.pulling.Wait()
	}
}

// drainAnswerTimeout bounds the heartbeat written before answering a drain
// request; the gateway waits a little longer.
const drainAnswerTimeout = 5 * time.Second

// onDrainRequest serves an admin's drain or undrain (DrainAgent): it holds
// or releases the slots, writes the heartbeat that says so, and answers
// with that record. Without an answer the gateway reports the agent
// unavailable.
func (a *Agent) onDrainRequest(ctx context.Context, m *nats.Msg) {
	req := &kilnv1.DrainAgentRequest{}
	if err := bus.Decode(m.Data, req); err != nil || req.Name != a.cfg.Name || m.Reply == "" {
		a.log.Warn("ignoring malformed drain request", "err", err)
		return
	}
	if req.Undrain {
		a.hold.set(false)
	} else {
		a.hold.set(true)
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainAnswerTimeout)
	defer cancel()
	rec, err := a.writeHeartbeat(hctx)
	if err != nil {
		a.log.Error("drain request: heartbeat not written; not answering", "undrain", req.Undrain, "err", err)
		return
	}
	if !req.Undrain {
		a.withdraw()
	}
	if err := a.answerDrain(m, rec); err != nil {
		a.log.Warn("answer drain request", "err", err)
	}
	if req.Undrain {
		a.log.Info("undrained by an admin: taking new builds")
	} else {
		a.log.Info("drained by an admin: no new builds; running builds go on", "busy_slots", a.busy.Load())
	}
}

func (a *Agent) answerDrain(m *nats.Msg, rec *kilnv1.Agent) error {
	reply, err := bus.NewMsg(m.Reply, &kilnv1.DrainAgentResponse{Agent: rec})
	if err != nil {
		return err
	}
	if err := m.RespondMsg(reply); err != nil {
		return fmt.Errorf("answer on %s: %w", m.Reply, err)
	}
	return nil
}
