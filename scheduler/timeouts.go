package scheduler

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Timeouts: the leader cancels a build whose spec.timeout has passed since
// the farm accepted it, queued or running, through buildstore.Cancel (the
// path CancelBuild takes): a queued build ends CANCELLED at once, and the
// dispatcher never assigns one past its deadline; a running build is
// marked cancel_requested and timed_out and its agent told on the cancel
// subject (or, if that is missed, at its next lease renewal), and its end
// is recorded as timed out. An agent that
// has not ended it a lease after its deadline has its build ended by the
// scheduler, which fences the agent's later reports.
//
// Deadlines are computed from the records (buildstore.Deadline): a term
// learns them from the records it recovers and from its intake, so a new
// leader enforces its predecessor's builds' timeouts.

// noteDeadline has the leader watch b's timeout, if it has one.
func (s *Scheduler) noteDeadline(b *kilnv1.Build) {
	if buildstore.Terminal(b.State) {
		return
	}
	if at, ok := buildstore.Deadline(b); ok {
		s.mu.Lock()
		if _, known := s.deadlines[b.Id]; !known {
			s.deadlines[b.Id] = at
		}
		s.mu.Unlock()
	}
}

// enforceTimeouts looks for builds past their deadline every SweepEvery.
func (s *Scheduler) enforceTimeouts(ctx context.Context) error {
	return s.everySweep(ctx, func() map[string]time.Time { return s.deadlines }, func(ctx context.Context, id string, now time.Time) {
		if err := s.timeOut(ctx, id, now); err != nil && ctx.Err() == nil {
			s.log.Error("cancel timed-out build", "build_id", id, "err", err)
		}
	})
}

// timeOut cancels build id, whose deadline has passed at now, or ends it
// if its agent has not a lease after the deadline. The build stays watched
// until it has ended.
func (s *Scheduler) timeOut(ctx context.Context, id string, now time.Time) error {
	b, outcome, err := s.builds.Cancel(ctx, id, buildstore.Cancellation{TimedOut: true, Now: s.cfg.Now})
	if errors.Is(err, buildstore.ErrNotFound) {
		s.forgetDeadline(id)
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case outcome == buildstore.CancelEnded:
		timedOut.WithLabelValues("cancelled").Inc()
		s.log.Info("queued build timed out: cancelled", "build_id", id, "error", b.Error)
		s.forgetDeadline(id)
		return nil
	case buildstore.Terminal(b.State):
		s.forgetDeadline(id)
		return nil
	case outcome == buildstore.CancelRequested:
		timedOut.WithLabelValues("requested").Inc()
		s.log.Info("build timed out: its agent is asked to stop it", "build_id", id, "agent", b.Agent, "attempt", b.Attempt)
		// The agent stops at once on the cancel subject, as for
		// CancelBuild; without it, at its next lease renewal.
		if err := s.cfg.Conn.NC.Publish(bus.CancelSubject(id), nil); err != nil {
			s.log.Warn("announce a timed-out build's cancellation", "build_id", id, "err", err)
		}
		s.event(ctx, b, &kilnv1.StateChanged{
			State: b.State, Agent: b.Agent, Attempt: b.Attempt,
			Message: buildstore.TimeoutError(b) + ": cancelling",
		})
	}
	deadline, _ := buildstore.Deadline(b)
	force := deadline.Add(s.cfg.Lease)
	if now.Before(force) {
		s.mu.Lock()
		if _, ok := s.deadlines[id]; ok {
			s.deadlines[id] = force // look again then
		}
		s.mu.Unlock()
		return nil
	}
	return s.forceTimeout(ctx, id, now)
}

// forceTimeout ends a timed-out build its agent did not stop: CANCELLED,
// timed out, and no agent, so that agent's later reports are fenced.
func (s *Scheduler) forceTimeout(ctx context.Context, id string, now time.Time) error {
	var agent string
	b, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		if buildstore.Terminal(b.State) {
			return errEnded
		}
		agent = b.Agent
		if leased(b.State) {
			buildstore.EndAttempt(b, now, buildstore.ReasonTimedOut)
		}
		b.State = kilnv1.BuildState_BUILD_STATE_CANCELLED
		b.TimedOut, b.Error = true, buildstore.TimeoutError(b)
		b.FinishedAt = timestamppb.New(now)
		b.Agent, b.LeaseExpiresAt = "", nil
		return nil
	})
	if errors.Is(err, errEnded) || errors.Is(err, buildstore.ErrNotFound) {
		s.forgetDeadline(id)
		return nil
	}
	if err != nil {
		return err
	}
	s.forgetDeadline(id)
	timedOut.WithLabelValues("forced").Inc()
	s.log.Warn("timed-out build not stopped by its agent: ended by the scheduler", "build_id", id, "agent", agent)
	return bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
		BuildId: id, Attempt: b.Attempt,
		Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
			State: b.State, Error: b.Error, Agent: agent, TimedOut: true,
		}},
	})
}

var errEnded = errors.New("build has ended")

func (s *Scheduler) forgetDeadline(id string) {
	s.mu.Lock()
	delete(s.deadlines, id)
	s.mu.Unlock()
}
