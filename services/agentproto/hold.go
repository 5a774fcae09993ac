package agentproto

import (
	"context"
	"sync"
	"sync/atomic"
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
