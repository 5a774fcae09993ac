package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/registryhost"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/secretid"
)

// Build secrets reach the gateway sealed to the farm's secrets key and
// bound to the caller's tenant and the build's seal nonce (see
// proto/rules/seal): the gateway checks their ids, sizes and key id, makes
// sure no two builds of a tenant share a seal nonce, stores them in the
// build record for the agent, and never holds a key that opens them. It
// logs secret ids only and hands builds back to clients without the sealed
// bytes.

const noSecretsKey = "this farm has no secrets key configured: set --secrets-public-key (or --secrets-key-file) on kiln-gateway; kilnd makes one in its data dir"

// GetSecretsKey returns the public key clients seal build secrets to, and
// the caller's tenant, which sealed values are bound to.
func (g *Gateway) GetSecretsKey(ctx context.Context, _ *kilnv1.GetSecretsKeyRequest) (*kilnv1.GetSecretsKeyResponse, error) {
	if g.secretsKey == nil {
		return nil, status.Error(codes.FailedPrecondition, noSecretsKey)
	}
	pub := *g.secretsKey
	return &kilnv1.GetSecretsKeyResponse{PublicKey: pub[:], KeyId: g.secretsKeyID, Tenant: tenantOf(ctx)}, nil
}

// validateSecrets checks what can be checked of a spec's secrets and
// registry credentials without the farm's key: ids, their uniqueness, count
// and sizes, and the seal nonce they are bound to. Errors name the secret
// by id (a registry by host), never by its bytes.
func validateSecrets(spec *kilnv1.BuildSpec) error {
	if len(spec.Secrets) > 0 && spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return invalid("build secrets need the BuildKit builder, but the classic builder was asked for")
	}
	if err := validateSealed(spec.Secrets, sealedKind{
		what: "secret", idName: "secret id", plural: "build secrets", max: secretid.MaxSecrets,
		maxSealed: secretid.MaxValueBytes + seal.Overhead, maxTotal: secretid.MaxTotalBytes, validID: secretid.Valid,
	}); err != nil {
		return err
	}
	if err := validateSealed(spec.RegistryAuth, sealedKind{
		what: "registry credential", idName: "registry", plural: "registry credentials", max: registryhost.MaxCredentials,
		maxSealed: registryhost.MaxCredentialBytes + seal.Overhead, maxTotal: registryhost.MaxCredentials * registryhost.MaxCredentialBytes, validID: registryhost.Valid,
	}); err != nil {
		return err
	}
	if hasSealed(spec) {
		if err := seal.CheckNonce(spec.SealNonce); err != nil && len(spec.SealNonce) == 0 {
			return invalid("%v (kiln clients older than this farm send none: upgrade the CLI or SDK)", err)
		} else if err != nil {
			return invalid("%v", err)
		}
	}
	return nil
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
		case n < seal.Overhead:
			return invalid("%s %q: sealed value is %d bytes, shorter than the %d bytes sealing adds: seal it to the key GetSecretsKey returns", k.what, s.Id, n, seal.Overhead)
		case n > k.maxSealed:
			return invalid("%s %q is %d bytes, over the limit of %d bytes", k.what, s.Id, n-seal.Overhead, k.maxSealed-seal.Overhead)
		default:
			total += n - seal.Overhead
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

// sealedValues lists spec's secrets, registry credentials and ssh keys
// together.
func sealedValues(spec *kilnv1.BuildSpec) []*kilnv1.SealedSecret {
	return slices.Concat(spec.GetSecrets(), spec.GetRegistryAuth(), spec.GetSsh())
}

// hasSealed reports whether spec carries sealed values: secrets, registry
// credentials or ssh keys.
func hasSealed(spec *kilnv1.BuildSpec) bool {
	return len(spec.GetSecrets()) > 0 || len(spec.GetRegistryAuth()) > 0 || len(spec.GetSsh()) > 0
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

// withoutSealedBytes returns spec, or a copy without the seal nonce and the
// sealed bytes and key ids of its secrets and registry credentials. Two
// requests that differ only in those are the same request: a retry re-seals
// the same values with a fresh nonce, and sealing is randomized.
func withoutSealedBytes(spec *kilnv1.BuildSpec) *kilnv1.BuildSpec {
	if !hasSealed(spec) && len(spec.GetSealNonce()) == 0 {
		return spec
	}
	c := proto.CloneOf(spec)
	c.SealNonce = nil
	for _, s := range sealedValues(c) {
		s.Sealed, s.KeyId = nil, ""
	}
	return c
}

// claimSealNonce records that build id of tenant uses the seal nonce of its
// spec, refusing a nonce already recorded for the tenant: the values of a
// build are sealed for its nonce alone, so a build that presents another
// build's nonce carries copied values (or a client that reuses nonces).
// Claims are never released; BucketSealNonces forgets them after
// bus.SealNonceTTL.
func (g *Gateway) claimSealNonce(ctx context.Context, tenant string, nonce []byte, id string) error {
	h := sha256.New()
	h.Write([]byte(tenant))
	h.Write([]byte{0})
	h.Write(nonce)
	key := hex.EncodeToString(h.Sum(nil))
	_, err := g.nonces.Create(ctx, key, []byte(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return status.Error(codes.AlreadyExists,
			"seal_nonce was already used by another build: every build needs a fresh random seal_nonce, and its secrets and registry credentials sealed for it (sealed values copied from another build are refused)")
	case err != nil:
		return fmt.Errorf("record seal nonce: %w", err)
	}
	return nil
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
