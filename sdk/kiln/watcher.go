package kiln

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// eventStream is the receiving side of one WatchBuild call.
type eventStream interface {
	Recv() (*kilnv1.BuildEvent, error)
}

type watchStream struct {
	s interface {
		Recv() (*kilnv1.WatchBuildResponse, error)
	}
}

func (w watchStream) Recv() (*kilnv1.BuildEvent, error) {
	resp, err := w.s.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetEvent(), nil
}

// watcher follows one build's event log across broken streams.
type watcher struct {
	open       func(ctx context.Context, from uint64) (eventStream, error)
	reconnects int
	backoff    time.Duration
}

// run delivers events from `from` on until the finished event, which it
// returns. Events at or below the last sequence delivered (replays after a
// reconnect) are dropped.
func (w watcher) run(ctx context.Context, from uint64, onEvent func(*kilnv1.BuildEvent)) (*kilnv1.BuildFinished, error) {
	next := max(from, 1)
	failures := 0
	for {
		progressed, finished, err := w.follow(ctx, &next, onEvent)
		if finished != nil {
			return finished, nil
		}
		if progressed {
			failures = 0
		}
		if err := w.pause(ctx, err, &failures); err != nil {
			return nil, err
		}
	}
}

// follow reads one stream until it ends, advancing next past each event.
func (w watcher) follow(ctx context.Context, next *uint64, onEvent func(*kilnv1.BuildEvent)) (progressed bool, finished *kilnv1.BuildFinished, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := w.open(ctx, *next)
	if err != nil {
		return false, nil, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, nil, status.Error(codes.Unavailable, "event stream ended before the build finished")
		}
		if err != nil {
			return progressed, nil, err
		}
		if seq := ev.GetSequence(); seq != 0 {
			if seq < *next {
				continue
			}
			*next = seq + 1
		}
		progressed = true
		if onEvent != nil {
			onEvent(ev)
		}
		if f := ev.GetFinished(); f != nil {
			return true, f, nil
		}
	}
}

// retry calls f until it succeeds, fails with a code other than
// Unavailable, or the reconnect budget is spent.
func (w watcher) retry(ctx context.Context, f func() error) error {
	failures := 0
	for {
		err := f()
		if err == nil {
			return nil
		}
		if err := w.pause(ctx, err, &failures); err != nil {
			return err
		}
	}
}

// pause decides whether err is worth another attempt; if so it waits the
// backoff and returns nil, else it returns the error to give up with.
func (w watcher) pause(ctx context.Context, err error, failures *int) error {
	if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
		return err
	}
	*failures++
	if *failures > w.reconnects {
		return fmt.Errorf("gave up after %d reconnects: %w", w.reconnects, err)
	}
	d := w.backoff << (*failures - 1)
	if d > maxBackoff || d < 0 {
		d = maxBackoff
	}
	if d == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return err
	case <-t.C:
		return nil
	}
}
