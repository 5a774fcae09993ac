package kiln

import (
	"errors"
	"fmt"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// [Build.Wait] tells how a build that did not succeed ended: a
// *BuildFailedError for a FAILED build, an error that matches ErrCancelled
// (errors.Is) for a cancelled one, and one that matches ErrTimedOut for a
// build the farm cancelled because it ran past BuildRequest.Timeout. The
// farm did its job in each case; the build did not succeed.
var (
	// ErrCancelled matches the error of a build that was cancelled
	// (Client.Cancel, Build.Cancel, kiln cancel), not of one that timed out.
	ErrCancelled = errors.New("build cancelled")
	// ErrTimedOut matches the error of a build the farm cancelled because
	// it ran longer than its timeout.
	ErrTimedOut = errors.New("build timed out")
)

// BuildFailedError is the error of a build that ended FAILED: which step
// failed and its last lines of output, gathered from the build's events.
type BuildFailedError struct {
	// Build is the build's final record; Build.Error is the farm's reason.
	Build *kilnv1.Build
	// Step is the 1-based Dockerfile step that failed, and Instruction
	// the instruction it ran ("RUN make"); 0 and "" when the build failed
	// outside any step (a context the engine refused, a failed push).
	Step        uint32
	Instruction string
	// Output holds the failing step's last lines of output (at most
	// FailedOutputLines), oldest first; without a step, the build's.
	Output []string
}

// FailedOutputLines bounds BuildFailedError.Output.
const FailedOutputLines = 20

// Error says which build failed at which step, and why.
func (e *BuildFailedError) Error() string {
	reason := e.Build.GetError()
	if rest, ok := strings.CutPrefix(reason, "build failed at step "); ok {
		// The farm's reason names the step already.
		return "build " + e.Build.GetId() + " failed at step " + rest
	}
	msg := "build " + e.Build.GetId() + " failed"
	if e.Step != 0 {
		msg += fmt.Sprintf(" at step %d", e.Step)
		if e.Instruction != "" {
			msg += " (" + e.Instruction + ")"
		}
	}
	if reason != "" {
		msg += ": " + reason
	}
	return msg
}

// endedError is the error of a build that was cancelled or timed out; it
// matches its reason, ErrCancelled or ErrTimedOut.
type endedError struct {
	build  *kilnv1.Build
	reason error
}

func (e *endedError) Error() string {
	what := "cancelled"
	if e.reason == ErrTimedOut {
		what = "timed out"
	}
	reason := e.build.GetError()
	switch {
	case reason == "":
		return "build " + e.build.GetId() + " " + what
	case strings.HasPrefix(reason, what):
		return "build " + e.build.GetId() + " " + reason // "timed out after 10m0s"
	}
	return "build " + e.build.GetId() + " " + what + ": " + reason
}

func (e *endedError) Unwrap() error { return e.reason }

// outcome is the error Wait returns for a build's final record: nil when
// it succeeded.
func outcome(record *kilnv1.Build, steps *stepLog) error {
	switch record.GetState() {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		return nil
	case kilnv1.BuildState_BUILD_STATE_CANCELLED:
		if timedOut(record) {
			return &endedError{build: record, reason: ErrTimedOut}
		}
		return &endedError{build: record, reason: ErrCancelled}
	}
	e := &BuildFailedError{Build: record}
	e.Step, e.Instruction, e.Output = steps.failed()
	return e
}

// timedOut reports whether the farm cancelled the build for its timeout.
func timedOut(b *kilnv1.Build) bool { return b.GetTimedOut() }
