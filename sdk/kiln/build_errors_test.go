package kiln

import (
	"errors"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestBuildFailedErrorMessage(t *testing.T) {
	err := error(&BuildFailedError{Build: &kilnv1.Build{Id: "b1", State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "exit code: 1"}, Step: 2, Instruction: "RUN false"})
	if got, want := err.Error(), "build b1 failed at step 2 (RUN false): exit code: 1"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	farm := &BuildFailedError{Build: &kilnv1.Build{Id: "b1", Error: "build failed at step 2 (RUN false): exit code: 1"}, Step: 2, Instruction: "RUN false"}
	if got, want := farm.Error(), "build b1 failed at step 2 (RUN false): exit code: 1"; got != want {
		t.Fatalf("Error() with the farm's reason naming the step = %q, want %q", got, want)
	}
	if errors.Is(err, ErrCancelled) || errors.Is(err, ErrTimedOut) {
		t.Fatal("a failed build's error matches ErrCancelled or ErrTimedOut")
	}
}

func TestOutcome(t *testing.T) {
	cancelled := &kilnv1.Build{Id: "b2", State: kilnv1.BuildState_BUILD_STATE_CANCELLED, Error: "cancelled by the user"}
	timedOut := &kilnv1.Build{Id: "b3", State: kilnv1.BuildState_BUILD_STATE_CANCELLED, TimedOut: true, Error: "timed out after 10m0s"}
	if err := outcome(cancelled, &stepLog{}); !errors.Is(err, ErrCancelled) || errors.Is(err, ErrTimedOut) || err.Error() != "build b2 cancelled by the user" {
		t.Errorf("cancelled: %v", err)
	}
	if err := outcome(timedOut, &stepLog{}); !errors.Is(err, ErrTimedOut) || errors.Is(err, ErrCancelled) || err.Error() != "build b3 timed out after 10m0s" {
		t.Errorf("timed out: %v", err)
	}
	if err := outcome(&kilnv1.Build{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}, &stepLog{}); err != nil {
		t.Errorf("succeeded: %v", err)
	}
}
