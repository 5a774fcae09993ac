package gateway

import (
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
)

// validateOutputs checks BuildSpec.outputs with proto/rules/outputs: at
// most one, of a type the farm exports, with only the attributes it takes,
// an image tarball only of a one-platform build.
func validateOutputs(spec *kilnv1.BuildSpec) error {
	if err := outputs.ValidateAll(spec.GetOutputs()); err != nil {
		return invalid("%v", err)
	}
	if err := outputs.CheckPlatforms(spec.GetOutputs(), len(spec.GetPlatforms())); err != nil {
		return invalid("%v", err)
	}
	return nil
}
