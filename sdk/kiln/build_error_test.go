package kiln

import (
	"errors"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestBuildError(t *testing.T) {
	err := error(&BuildError{Build: &kilnv1.Build{Id: "b1", State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "RUN false: exit code: 1"}})
	if got, want := err.Error(), "build b1 failed: RUN false: exit code: 1"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	var be *BuildError
	if !errors.As(err, &be) || be.Cancelled() {
		t.Fatal("not a failed BuildError")
	}
	cancelled := &BuildError{Build: &kilnv1.Build{Id: "b2", State: kilnv1.BuildState_BUILD_STATE_CANCELLED}}
	if !cancelled.Cancelled() || !strings.Contains(cancelled.Error(), "b2 cancelled") {
		t.Fatalf("cancelled: %q", cancelled.Error())
	}
}
