package gateway

import (
	"context"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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

// validateSecrets checks what can be checked of a spec's secrets without the
// farm's key: ids, their uniqueness, count and sizes. Errors name the
// secret by id, never by its bytes.
func validateSecrets(spec *kilnv1.BuildSpec) error {
	if len(spec.Secrets) == 0 {
		return nil
	}
	if n := len(spec.Secrets); n > sealed.MaxSecrets {
		return invalid("%d build secrets given, at most %d allowed", n, sealed.MaxSecrets)
	}
	if spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return invalid("build secrets need the BuildKit builder, but the classic builder was asked for")
	}
	seen := make(map[string]bool, len(spec.Secrets))
	total := 0
	for _, s := range spec.Secrets {
		if s == nil {
			return invalid("a build secret is empty")
		}
		if err := sealed.ValidID(s.Id); err != nil {
			return invalid("%v", err)
		}
		if seen[s.Id] {
			return invalid("secret id %q is given twice", s.Id)
		}
		seen[s.Id] = true
		switch n := len(s.Sealed); {
		case n < sealed.Overhead:
			return invalid("secret %q: sealed value is %d bytes, shorter than the %d bytes sealing adds: seal it to the key GetSecretsKey returns", s.Id, n, sealed.Overhead)
		case n > sealed.MaxSealedBytes:
			return invalid("secret %q is %d bytes, over the limit of %d bytes", s.Id, n-sealed.Overhead, sealed.MaxSecretBytes)
		default:
			total += n - sealed.Overhead
		}
	}
	if total > sealed.MaxTotalSecretBytes {
		return invalid("the build's secrets are %d bytes together, over the limit of %d bytes", total, sealed.MaxTotalSecretBytes)
	}
	return nil
}

// checkSealedTo makes sure every secret was sealed to the farm's current
// key, so an agent can open it.
func (g *Gateway) checkSealedTo(spec *kilnv1.BuildSpec) error {
	if len(spec.Secrets) == 0 {
		return nil
	}
	if g.secretsKey == nil {
		return status.Errorf(codes.FailedPrecondition, "build secrets given, but %s", noSecretsKey)
	}
	for _, s := range spec.Secrets {
		if s.KeyId != g.secretsKeyID {
			return status.Errorf(codes.FailedPrecondition,
				"secret %q was sealed to key %q, but the farm's secrets key is %s (the key changed): run the build again to re-seal its secrets",
				s.Id, s.KeyId, g.secretsKeyID)
		}
	}
	return nil
}

// secretIDs lists a spec's secret ids, for logs.
func secretIDs(spec *kilnv1.BuildSpec) []string {
	if len(spec.GetSecrets()) == 0 {
		return nil
	}
	ids := make([]string, len(spec.Secrets))
	for i, s := range spec.Secrets {
		ids[i] = s.GetId()
	}
	return ids
}

// withoutSealedBytes returns spec, or a copy without the secrets' sealed
// bytes and key ids when it has secrets. Two requests that differ only in
// those bytes are the same request: sealing is randomized, so a retry that
// re-seals the same secrets sends other bytes.
func withoutSealedBytes(spec *kilnv1.BuildSpec) *kilnv1.BuildSpec {
	if len(spec.GetSecrets()) == 0 {
		return spec
	}
	c := proto.CloneOf(spec)
	for _, s := range c.Secrets {
		s.Sealed, s.KeyId = nil, ""
	}
	return c
}

// forClient returns the build as a client sees it: without the sealed bytes
// of its secrets (only agents need them; a list of builds would otherwise
// carry up to MaxTotalSecretBytes per build). b itself is not changed.
func forClient(b *kilnv1.Build) *kilnv1.Build {
	if len(b.GetSpec().GetSecrets()) == 0 {
		return b
	}
	c := proto.CloneOf(b)
	for _, s := range c.Spec.Secrets {
		s.Sealed = nil
	}
	return c
}
