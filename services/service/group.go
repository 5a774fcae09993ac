package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Group runs the parts of a process (an embedded NATS server, a gateway, a
// scheduler, an agent, an HTTP server) and stops them in order: the last
// added first, each stopped and waited for before the one added before it
// is told to stop. Add a part after the parts it relies on, and it can rely
// on them until it has stopped: an agent added after the scheduler drains
// while the scheduler still takes its reports.
//
// Each part runs until its context ends, which happens only when the group
// stops it; a part that returns on its own (failed or not) stops the group.
type Group struct {
	log   *slog.Logger
	base  context.Context
	parts []*part
	// ended is signalled by a part that returned on its own.
	ended chan struct{}
}

type part struct {
	name string
	stop context.CancelFunc
	done chan struct{}
	err  error
	// early: it returned before it was stopped. Set before done closes.
	early bool
}

// NewGroup returns an empty group whose parts' contexts carry ctx's values
// (not its cancellation: Wait stops them); log hears of each part stopping
// (nil: nothing is logged).
func NewGroup(ctx context.Context, log *slog.Logger) *Group {
	return &Group{log: log, base: context.WithoutCancel(ctx), ended: make(chan struct{}, 1)}
}

// Go starts part name: run runs until its context ends (the group stops
// it) and returns what went wrong, if anything.
func (g *Group) Go(name string, run func(ctx context.Context) error) {
	ctx, stop := context.WithCancel(g.base)
	p := &part{name: name, stop: stop, done: make(chan struct{})}
	g.parts = append(g.parts, p)
	go func() {
		defer close(p.done)
		p.err = run(ctx)
		if p.early = ctx.Err() == nil; p.early {
			select {
			case g.ended <- struct{}{}:
			default:
			}
		}
	}()
}

// Wait waits until ctx ends or a part returns on its own, then stops the
// parts, last added first, and returns their errors; a part that returned
// on its own returns an error naming it even if it returned none.
func (g *Group) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
	case <-g.ended:
	}
	return g.Stop()
}

// Stop stops the parts, last added first, each waited for before the next
// is told to stop, and returns their errors (see Wait). Stop may be
// called more than once.
func (g *Group) Stop() error {
	var errs []error
	for i := len(g.parts) - 1; i >= 0; i-- {
		p := g.parts[i]
		select {
		case <-p.done:
		default:
			if g.log != nil {
				g.log.Info("stopping", "part", p.name)
			}
		}
		p.stop()
		<-p.done
		switch {
		case p.err != nil && !errors.Is(p.err, context.Canceled):
			errs = append(errs, fmt.Errorf("%s: %w", p.name, p.err))
		case p.early && p.err == nil:
			errs = append(errs, fmt.Errorf("%s stopped by itself", p.name))
		}
	}
	return errors.Join(errs...)
}

// Parts names the parts in the order they were added (they stop in the
// reverse order).
func (g *Group) Parts() []string {
	names := make([]string, len(g.parts))
	for i, p := range g.parts {
		names[i] = p.name
	}
	return names
}
