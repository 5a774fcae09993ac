package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// assignLog is the scheduler's slog handler: it passes records on to base
// at base's level and notes when the dispatcher logged "build assigned",
// the last thing dispatcher.assign does after the CAS, the reply and the
// ASSIGNED event. With the lease start (the decision) that gives how long
// the single dispatcher goroutine spends on each assignment.
type assignLog struct {
	base slog.Handler
	seen *assignTimes
}

type assignTimes struct {
	mu sync.Mutex
	at map[string]time.Time // build id → "build assigned" logged
}

var _ slog.Handler = assignLog{}

func newAssignLog(base slog.Handler) assignLog {
	return assignLog{base: base, seen: &assignTimes{at: map[string]time.Time{}}}
}

func (h assignLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.base.Enabled(ctx, l)
}

func (h assignLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "build assigned" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "build_id" {
				return true
			}
			h.seen.mu.Lock()
			h.seen.at[a.Value.String()] = r.Time
			h.seen.mu.Unlock()
			return false
		})
	}
	if !h.base.Enabled(ctx, r.Level) {
		return nil
	}
	return h.base.Handle(ctx, r)
}

func (h assignLog) WithAttrs(as []slog.Attr) slog.Handler {
	return assignLog{base: h.base.WithAttrs(as), seen: h.seen}
}

func (h assignLog) WithGroup(name string) slog.Handler {
	return assignLog{base: h.base.WithGroup(name), seen: h.seen}
}

// get returns when build id's assignment was logged.
func (t *assignTimes) get(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.at[id]
}
