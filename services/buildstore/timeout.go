package buildstore

import (
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildtimeout"
)

// Deadline is when build b times out: its spec's timeout after the farm
// accepted it (created_at). ok is false for a build without a timeout.
// It is computed from the record alone, so whichever scheduler leads
// enforces it.
func Deadline(b *kilnv1.Build) (deadline time.Time, ok bool) {
	d := b.GetSpec().GetTimeout()
	if d == nil || b.GetCreatedAt() == nil || d.AsDuration() <= 0 {
		return time.Time{}, false
	}
	return b.CreatedAt.AsTime().Add(d.AsDuration()), true
}

// TimeoutError is the error of a build cancelled because its timeout
// passed ("timed out after 10m0s").
func TimeoutError(b *kilnv1.Build) string {
	return buildtimeout.Message(b.GetSpec().GetTimeout().AsDuration())
}

// Expired reports whether b has a timeout that has passed at now.
func Expired(b *kilnv1.Build, now time.Time) bool {
	d, ok := Deadline(b)
	return ok && !now.Before(d)
}
