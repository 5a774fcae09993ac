package buildstore

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// Cancellation says who cancels a build and how it ends.
type Cancellation struct {
	// Error is the error a queued build ends with.
	Error string
	// TimedOut marks the farm cancelling the build because its timeout
	// passed: the record's timed_out is set, and the build ends with
	// TimeoutError whatever stopped it.
	TimedOut bool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// CancelOutcome is what Cancel did.
type CancelOutcome int

const (
	// CancelUnchanged: the build had finished, or was ASSIGNED or RUNNING
	// with its cancel requested already; nothing was written.
	CancelUnchanged CancelOutcome = iota
	// CancelEnded: the build was QUEUED and is CANCELLED now; its finished
	// event is published.
	CancelEnded
	// CancelRequested: the build is ASSIGNED or RUNNING and now marked
	// cancel_requested; its agent stops it and reports its end.
	CancelRequested
)

// Cancel is the one way a build is cancelled, by its owner (CancelBuild)
// or by the farm (its timeout): a QUEUED build ends CANCELLED at once with
// why.Error and its finished event is published; an ASSIGNED or RUNNING
// build is marked cancel_requested, which its agent reads when it renews
// its lease (the caller may tell it sooner on bus.CancelSubject), and ends
// when the agent reports; a finished build is returned as it is.
func (s *Store) Cancel(ctx context.Context, id string, why Cancellation) (*kilnv1.Build, CancelOutcome, error) {
	now := time.Now
	if why.Now != nil {
		now = why.Now
	}
	var outcome CancelOutcome
	b, err := s.Update(ctx, id, func(b *kilnv1.Build) error {
		switch {
		case Terminal(b.State):
			return errUnchanged
		case b.State == kilnv1.BuildState_BUILD_STATE_QUEUED:
			outcome = CancelEnded
			b.State = kilnv1.BuildState_BUILD_STATE_CANCELLED
			b.FinishedAt = timestamppb.New(now())
			b.Error = why.Error
			if why.TimedOut {
				b.TimedOut, b.Error = true, TimeoutError(b)
			}
		case b.CancelRequested:
			return errUnchanged
		default:
			outcome = CancelRequested
			b.CancelRequested, b.TimedOut = true, why.TimedOut
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		b, _, err = s.Get(ctx, id)
		return b, CancelUnchanged, err
	}
	if err != nil {
		return nil, CancelUnchanged, err
	}
	if outcome == CancelEnded {
		if err := bus.PublishEvent(ctx, s.js, &kilnv1.BuildEvent{
			BuildId: b.Id,
			Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
				State: b.State, Error: b.Error, TimedOut: b.TimedOut,
			}},
		}); err != nil {
			return b, outcome, err
		}
	}
	return b, outcome, nil
}

var errUnchanged = errors.New("unchanged")
