package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/kilnbuild/kiln/services/buildstore"
)

// TestOutcome: the result label says what finish did with the build.
func TestOutcome(t *testing.T) {
	failed := errors.New("RUN exited 1")
	tests := []struct {
		name            string
		buildErr, cause error
		want            string
	}{
		{"succeeded", nil, nil, "succeeded"},
		{"failed", failed, nil, "failed"},
		{"cancelled", failed, errCancelled, "cancelled"},
		{"drained", failed, errDrained, outcomeHandedBack},
		{"farm unreachable", farm(errors.New("nats: timeout")), nil, outcomeHandedBack},
		{"farm error after a cancel", farm(errors.New("nats: timeout")), errCancelled, "cancelled"},
		{"lost the lease", failed, errLost, outcomeAbandoned},
		{"fenced", fmt.Errorf("push: %w", buildstore.ErrFenced), nil, outcomeAbandoned},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := outcome(tc.buildErr, tc.cause); got != tc.want {
				t.Fatalf("outcome(%v, %v) = %q, want %q", tc.buildErr, tc.cause, got, tc.want)
			}
		})
	}
}
