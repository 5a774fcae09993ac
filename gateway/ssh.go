package gateway

import (
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/sshid"
)

// A build's ssh keys (BuildSpec.ssh, --ssh) reach the gateway sealed like
// its secrets, and are one more list of sealed values: hasSealed and
// sealedValues count them, so the seal nonce, the key id, merging,
// idempotency and what clients see treat them as they treat secrets. The
// gateway sees their ssh ids and sizes only.

// validateSSH checks a spec's ssh keys without the farm's key: the
// builder, their ids, uniqueness, count and sizes (proto/rules/sshid).
// Errors name an ssh id, never the sealed bytes.
func validateSSH(spec *kilnv1.BuildSpec) error {
	if len(spec.GetSsh()) == 0 {
		return nil
	}
	if spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return invalid("--ssh keys need the BuildKit builder, but the classic builder was asked for")
	}
	return validateSealed(spec.GetSsh(), sealedKind{
		what: "ssh key", idName: "ssh id", plural: "ssh ids", max: sshid.MaxIDs,
		maxSealed: sshid.MaxValueBytes + seal.Overhead, maxTotal: sshid.MaxTotalBytes, validID: sshid.Valid,
	})
}
