package buildstore

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Attempt history (Build.attempts): every writer of an attempt's change —
// the dispatcher assigning, the report handler starting, finishing or
// handing back, the sweeper losing an agent, a timeout ending a build —
// records it here, inside the same compare-and-swap as the change itself.

// Why an attempt ended (BuildAttempt.reason).
const (
	ReasonFinished     = "finished"
	ReasonFailed       = "failed"
	ReasonCancelled    = "cancelled"
	ReasonTimedOut     = "timed out"
	ReasonAgentLost    = "agent lost"
	ReasonNotStarted   = "agent did not start it in time"
	reasonHandedBackAs = "handed back: "
)

// ReasonHandedBack is the reason of an attempt its agent handed back.
func ReasonHandedBack(why string) string {
	if why == "" {
		return "handed back"
	}
	return reasonHandedBackAs + why
}

// ReasonEnded is the reason of an attempt whose agent reported the build
// ended in state st.
func ReasonEnded(st kilnv1.BuildState, timedOut bool) string {
	switch {
	case timedOut:
		return ReasonTimedOut
	case st == kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		return ReasonFinished
	case st == kilnv1.BuildState_BUILD_STATE_CANCELLED:
		return ReasonCancelled
	}
	return ReasonFailed
}

// BeginAttempt records the attempt b.Attempt on b.Agent, assigned at now.
// Call it once the record names the new attempt and its agent.
func BeginAttempt(b *kilnv1.Build, now time.Time) {
	b.Attempts = append(b.Attempts, &kilnv1.BuildAttempt{
		Attempt: b.Attempt, Agent: b.Agent, AssignedAt: timestamppb.New(now),
	})
}

// StartAttempt records that the current attempt's agent started the build.
func StartAttempt(b *kilnv1.Build, now time.Time) {
	if a := currentAttempt(b); a.StartedAt == nil {
		a.StartedAt = timestamppb.New(now)
	}
}

// EndAttempt records that the current attempt ended at now, and why. Call
// it before the record forgets the attempt's agent.
func EndAttempt(b *kilnv1.Build, now time.Time, reason string) {
	if a := currentAttempt(b); a.EndedAt == nil {
		a.EndedAt, a.Reason = timestamppb.New(now), reason
	}
}

// currentAttempt is b.Attempt's entry of the history, added if a record
// written before attempts were recorded lacks it.
func currentAttempt(b *kilnv1.Build) *kilnv1.BuildAttempt {
	if n := len(b.Attempts); n > 0 && b.Attempts[n-1].Attempt == b.Attempt {
		return b.Attempts[n-1]
	}
	a := &kilnv1.BuildAttempt{Attempt: b.Attempt, Agent: b.Agent}
	b.Attempts = append(b.Attempts, a)
	return a
}
