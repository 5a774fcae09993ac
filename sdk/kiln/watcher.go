package kiln

import (
	"context"
	"errors"
	"io"

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

// errLogEnd is a no_follow stream's end: the log's end when it began.
var errLogEnd = errors.New("end of the build's log so far")

// watcher follows one build's event log across broken streams, on
// whichever gateway answers.
type watcher struct {
	open  func(ctx context.Context, from uint64) (eventStream, error)
	retry *retrier
	// soFar: the streams end at the log's end (no_follow), and so does
	// the watch.
	soFar bool
}

// run delivers events from `from` on until the finished event, which it
// returns. A stream that breaks with codes.Unavailable, or ends before the
// finished event, is opened again from the sequence after the last event
// delivered; events at or below it (a gateway that replays) are dropped,
// so onEvent sees each sequence once, in order.
//
// With soFar the watch goes on past the finished event to the log's end:
// the automatic warm start's cache export follows a build's finish.
func (w watcher) run(ctx context.Context, from uint64, onEvent func(*kilnv1.BuildEvent)) (*kilnv1.BuildFinished, error) {
	next := max(from, 1)
	down := w.retry.outage()
	var seen *kilnv1.BuildFinished // with soFar: the finished event, delivered
	for {
		progressed, finished, err := w.follow(ctx, &next, func(ev *kilnv1.BuildEvent) {
			if f := ev.GetFinished(); f != nil {
				seen = f
			}
			if onEvent != nil {
				onEvent(ev)
			}
		})
		if finished != nil {
			return finished, nil
		}
		if errors.Is(err, errLogEnd) {
			return seen, nil
		}
		if progressed {
			down.progressed()
		}
		if err := down.wait(ctx, err); err != nil {
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
			if w.soFar {
				return progressed, nil, errLogEnd
			}
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
		if f := ev.GetFinished(); f != nil && !w.soFar {
			return true, f, nil
		}
	}
}
