package kiln

import (
	"context"
	"fmt"
	"sync"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/proto"
)

// Build is a build on the farm that the Client follows, from Client.Build
// or Client.Watch: its events as they happen (Events) and how it ended
// (Wait). It follows the build from its own goroutine, under the context
// given to Client.Build or Client.Watch: cancelling that context stops
// following, never the build itself (Cancel does that). When a gateway
// goes away the Client resumes on whichever answers, from the event after
// the last one delivered (see WithFailover).
//
// Its methods are safe for concurrent use.
type Build struct {
	c   *Client
	id  string
	ctx context.Context
	// soFar is set when the Build replays its log so far only (SoFar).
	soFar bool

	// done is closed once following ended: final and err are set.
	done chan struct{}
	// more is signalled (without blocking) when events are queued or
	// following ended.
	more chan struct{}

	eventsOnce sync.Once
	events     chan Event

	mu sync.Mutex // guards the fields below
	// record is the latest record: the one the build started or was
	// found with, then the final one.
	record *kilnv1.Build
	// queue holds the events not yet handed to the Events channel.
	queue []Event
	final *kilnv1.Build
	err   error
}

// ID is the build's id.
func (b *Build) ID() string { return b.id }

// Record returns the build's record as of the latest event the Client
// has received: the record the build was started (or found, by Watch)
// with, carrying the state, agent and attempt of the latest state event
// received, and once the build has ended its final record. (A Watch from
// the start of a running build replays its state events: the state goes
// through them again.)
func (b *Build) Record() *kilnv1.Build {
	b.mu.Lock()
	defer b.mu.Unlock()
	return proto.CloneOf(b.record)
}

// Events returns the build's events, every one once and in sequence order,
// from the start (or from the sequence given to Client.Watch) — also those
// that happened before Events was called. The channel is closed after the
// *Finished event, or when following stops without it (Wait then says
// why).
//
// Reading the channel is optional: the Client queues events in memory
// until they are read and never waits for the reader, so a caller that
// only wants the result calls Wait alone. A caller that reads may stop at
// any time; the goroutine feeding the channel ends with the context given
// to Client.Build or Client.Watch.
func (b *Build) Events() <-chan Event {
	b.eventsOnce.Do(func() {
		b.events = make(chan Event)
		go b.feed()
	})
	return b.events
}

// feed hands the queued events to the Events channel until following
// ended and the queue is empty, or the Build's context ends.
func (b *Build) feed() {
	defer close(b.events)
	for {
		b.mu.Lock()
		var next Event
		if len(b.queue) > 0 {
			next = b.queue[0]
			b.queue[0] = nil
			b.queue = b.queue[1:]
		}
		b.mu.Unlock()
		if next == nil {
			select {
			case <-b.done:
				b.mu.Lock()
				empty := len(b.queue) == 0
				b.mu.Unlock()
				if empty {
					return
				}
			case <-b.more:
			case <-b.ctx.Done():
				return
			}
			continue
		}
		select {
		case b.events <- next:
		case <-b.ctx.Done():
			return
		}
	}
}

// Wait waits until the build has ended and returns its final record with
// nil for a build that SUCCEEDED; for one that did not, the record and a
// *BuildFailedError (FAILED), an error matching ErrCancelled or one
// matching ErrTimedOut (CANCELLED). If following the build failed (no
// gateway answered within WithFailover's limit, the context given to
// Client.Build ended), it returns nil and that error. If ctx ends first, it
// returns nil and ctx's error; the build is followed on.
func (b *Build) Wait(ctx context.Context) (*kilnv1.Build, error) {
	select {
	case <-b.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for build %s: %w", b.id, ctx.Err())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.final, b.err
}

// Cancel asks the farm to cancel the build (see Client.Cancel). The build
// ends CANCELLED once its agent has stopped; Wait then returns an error
// matching ErrCancelled.
func (b *Build) Cancel(ctx context.Context) error {
	_, err := b.c.Cancel(ctx, b.id)
	return err
}

// follow returns a Build for record whose goroutine follows its events
// from fromSequence (0 or 1: the start) under ctx.
func (c *Client) follow(ctx context.Context, record *kilnv1.Build, fromSequence uint64, soFar bool) *Build {
	b := &Build{
		c: c, id: record.GetId(), ctx: ctx, record: record, soFar: soFar,
		done: make(chan struct{}), more: make(chan struct{}, 1),
	}
	go b.run(fromSequence, soFar)
	return b
}

// run follows the build to its end, then reads its final record.
func (b *Build) run(fromSequence uint64, soFar bool) {
	var steps stepLog
	final, err := b.c.watch(b.ctx, b.id, fromSequence, soFar, func(pb *kilnv1.BuildEvent) {
		ev := newEvent(pb)
		steps.add(ev)
		b.mu.Lock()
		b.queue = append(b.queue, ev)
		if st := pb.GetState(); st != nil {
			r := proto.CloneOf(b.record)
			r.State, r.Agent, r.Attempt = st.GetState(), st.GetAgent(), st.GetAttempt()
			b.record = r
		}
		b.mu.Unlock()
		b.signal()
	})
	if err == nil && terminal(final.GetState()) { // not with SoFar, on a running build
		err = outcome(final, &steps)
	}
	b.mu.Lock()
	b.final, b.err = final, err
	if final != nil {
		b.record = final
	}
	b.mu.Unlock()
	close(b.done)
	b.signal()
}

func (b *Build) signal() {
	select {
	case b.more <- struct{}{}:
	default:
	}
}

// watch follows a build's events from fromSequence until its finished
// event, calling onEvent for each once, in order, and returns the final
// record from GetBuild (made to agree with the finished event).
//
// With soFar it stops at the end of the log as it was (WatchBuildRequest
// no_follow), and the record may not have ended.
func (c *Client) watch(ctx context.Context, buildID string, fromSequence uint64, soFar bool, onEvent func(*kilnv1.BuildEvent)) (*kilnv1.Build, error) {
	open := func(ctx context.Context, from uint64) (eventStream, error) {
		s, err := c.builds.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: buildID, FromSequence: from, NoFollow: soFar})
		if err != nil {
			return nil, err
		}
		return watchStream{s}, nil
	}
	w := watcher{open: open, retry: c.retry, soFar: soFar}
	finished, err := w.run(ctx, fromSequence, onEvent)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err() // what errors.Is(err, context.Canceled) looks for
		}
		return nil, fmt.Errorf("watching build %s: %w", buildID, err)
	}
	var record *kilnv1.Build
	err = c.retry.retry(ctx, func() error {
		var err error
		record, err = c.Get(ctx, buildID)
		return err
	})
	if err != nil {
		return nil, err
	}
	settle(record, finished)
	return record, nil
}
