package gateway

import (
	"context"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"slices"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/sealed"
)

// Build secrets reach the gateway sealed to the farm's secrets key (see
// package sealed): the gateway checks their ids, sizes and key id, stores
// them in the build record for the agent, and never holds a key that opens
// them. It logs secret ids only and hands builds back to clients without
// the sealed bytes.

const noSecretsKey = "this farm has no secrets key configured: set --secrets-public-key (or --secrets-key-file) on kiln-gateway; kilnd makes one in its data dir"

// GetSecretsKey returns the public key clients seal build secrets to.
func (g *Gateway) GetSecretsKey(context.Context, *kilnv1.GetSecretsKeyRequest) (*kilnv1.GetSecretsKeyResponse, error) {
	if g.secretsKey == nil {
		return nil, status.Error(codes.FailedPrecondition, noSecretsKey)
	}
	pub := *g.secretsKey
	return &kilnv1.GetSecretsKeyResponse{PublicKey: pub[:], KeyId: g.secretsKeyID}, nil
}

// validateSecrets checks what can be checked of a spec's secrets and
// registry credentials without the farm's key: ids, their uniqueness, count
// and sizes. Errors name the secret by id (a registry by host), never by
// its bytes.
func validateSecrets(spec *kilnv1.BuildSpec) error {
	if len(spec.Secrets) > 0 && spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return invalid("build secrets need the BuildKit builder, but the classic builder was asked for")
	}
	if err := validateSealed(spec.Secrets, sealedKind{
		what: "secret", idName: "secret id", plural: "build secrets", max: sealed.MaxSecrets, maxSealed: sealed.MaxSealedBytes, maxTotal: sealed.MaxTotalSecretBytes, validID: sealed.ValidID,
	}); err != nil {
		return err
	}
	return validateSealed(spec.RegistryAuth, sealedKind{
		what: "registry credential", idName: "registry", plural: "registry credentials", max: sealed.MaxRegistryAuth, maxSealed: sealed.MaxRegistryAuthBytes,
		maxTotal: sealed.MaxRegistryAuth * sealed.MaxRegistryAuthBytes, validID: sealed.ValidRegistryHost,
	})
}

// sealedKind is the rules of one list of sealed values in a spec.
type sealedKind struct {
	what      string // "secret", as errors name one
	idName    string // "secret id", as errors name its id
	plural    string // "build secrets"
	max       int    // how many
	maxSealed int    // bytes of one, sealed
	maxTotal  int    // bytes of all together, opened
	validID   func(string) error
}

func validateSealed(list []*kilnv1.SealedSecret, k sealedKind) error {
	if len(list) == 0 {
		return nil
	}
	if n := len(list); n > k.max {
		return invalid("%d %s given, at most %d allowed", n, k.plural, k.max)
	}
	seen := make(map[string]bool, len(list))
	total := 0
	for _, s := range list {
		if s == nil {
			return invalid("a %s is empty", k.what)
		}
		if err := k.validID(s.Id); err != nil {
			return invalid("%v", err)
		}
		if seen[s.Id] {
			return invalid("%s %q is given twice", k.idName, s.Id)
		}
		seen[s.Id] = true
		switch n := len(s.Sealed); {
		case n < sealed.Overhead:
			return invalid("%s %q: sealed value is %d bytes, shorter than the %d bytes sealing adds: seal it to the key GetSecretsKey returns", k.what, s.Id, n, sealed.Overhead)
		case n > k.maxSealed:
			return invalid("%s %q is %d bytes, over the limit of %d bytes", k.what, s.Id, n-sealed.Overhead, k.maxSealed-sealed.Overhead)
		default:
			total += n - sealed.Overhead
		}
	}
	if total > k.maxTotal {
		return invalid("the build's %s are %d bytes together, over the limit of %d bytes", strings.TrimPrefix(k.plural, "build "), total, k.maxTotal)
	}
	return nil
}

// checkSealedTo makes sure every secret and registry credential was sealed
// to the farm's current key, so an agent can open it.
func (g *Gateway) checkSealedTo(spec *kilnv1.BuildSpec) error {
	if !hasSealed(spec) {
		return nil
	}
	if g.secretsKey == nil {
		return status.Errorf(codes.FailedPrecondition, "build secrets or registry credentials given, but %s", noSecretsKey)
	}
	for _, s := range sealedValues(spec) {
		if s.KeyId != g.secretsKeyID {
			return status.Errorf(codes.FailedPrecondition,
				"secret %q was sealed to key %q, but the farm's secrets key is %s (the key changed): run the build again to re-seal its secrets",
				s.Id, s.KeyId, g.secretsKeyID)
		}
	}
	return nil
}

// sealedValues lists spec's secrets and registry credentials together.
func sealedValues(spec *kilnv1.BuildSpec) []*kilnv1.SealedSecret {
	return append(slices.Clip(spec.GetSecrets()), spec.GetRegistryAuth()...)
}

// hasSealed reports whether spec carries sealed values: secrets or registry
// credentials.
func hasSealed(spec *kilnv1.BuildSpec) bool {
	return len(spec.GetSecrets()) > 0 || len(spec.GetRegistryAuth()) > 0
}

// sealedIDs lists the ids of sealed values (secret ids, registry hosts),
// for logs.
func sealedIDs(list []*kilnv1.SealedSecret) []string {
	if len(list) == 0 {
		return nil
	}
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.GetId()
	}
	return ids
}

// withoutSealedBytes returns spec, or a copy without the sealed bytes and
// key ids of its secrets and registry credentials. Two requests that differ
// only in those bytes are the same request: sealing is randomized, so a
// retry that re-seals the same values sends other bytes.
func withoutSealedBytes(spec *kilnv1.BuildSpec) *kilnv1.BuildSpec {
	if !hasSealed(spec) {
		return spec
	}
	c := proto.CloneOf(spec)
	for _, s := range sealedValues(c) {
		s.Sealed, s.KeyId = nil, ""
	}
	return c
}

// forClient returns the build as a client sees it: without the sealed bytes
// of its secrets and registry credentials (only agents need them; a list of
// builds would otherwise carry up to MaxTotalSecretBytes per build). b
// itself is not changed.
func forClient(b *kilnv1.Build) *kilnv1.Build {
	if !hasSealed(b.GetSpec()) {
		return b
	}
	c := proto.CloneOf(b)
	for _, s := range sealedValues(c.Spec) {
		s.Sealed = nil
	}
	return c
}
