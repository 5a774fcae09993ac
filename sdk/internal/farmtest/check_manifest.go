package farmtest

import (
	"math"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
)

// noLimits leaves a manifest's size to the test: the farm's rules apply,
// its limits do not.
var noLimits = buildctx.Limits{MaxTotalBytes: math.MaxInt64, MaxEntries: math.MaxInt, MaxPathLen: math.MaxInt}

// CheckManifest applies the farm's rules for a context manifest
// (proto/rules/buildctx), limits aside.
func CheckManifest(m *kilnv1.ContextManifest) error {
	_, err := buildctx.Validate(m, noLimits)
	return err
}
