package kiln

import (
	"fmt"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// BuildError is returned with the record of a build that ended FAILED or
// CANCELLED: the farm did its job, the build did not succeed.
type BuildError struct {
	// Build is the build's final record.
	Build *kilnv1.Build
}

// Error says which build ended how, and why.
func (e *BuildError) Error() string {
	state := strings.ToLower(strings.TrimPrefix(e.Build.GetState().String(), "BUILD_STATE_"))
	msg := fmt.Sprintf("build %s %s", e.Build.GetId(), state)
	if e.Build.GetError() != "" {
		msg += ": " + e.Build.GetError()
	}
	return msg
}

// Cancelled reports whether the build was cancelled rather than failed.
func (e *BuildError) Cancelled() bool {
	return e.Build.GetState() == kilnv1.BuildState_BUILD_STATE_CANCELLED
}
