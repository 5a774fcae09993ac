package kiln

import (
	"context"
	"fmt"
	"slices"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/secretid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Build secrets (BuildRequest.Secrets) and registry credentials are sealed
// here, on the client, to the farm's secrets key and bound to the caller's
// tenant and to this one build (see package proto/rules/seal): only the
// farm's agents can open them, and only in this build. The gateway, NATS
// and the farm's records see the ids and the sealed bytes only. The rules
// and limits are the farm's own (proto/rules/secretid); the gateway checks
// them again.
const (
	// MaxSecretBytes bounds one secret's value (500 KiB, as BuildKit).
	MaxSecretBytes = secretid.MaxValueBytes
	// MaxTotalSecretBytes bounds the values of one build's secrets together.
	MaxTotalSecretBytes = secretid.MaxTotalBytes
	// MaxSecrets bounds the number of secrets of one build.
	MaxSecrets = secretid.MaxSecrets
)

// ValidateSecretID checks a secret id as the farm does: 1 to 128 letters,
// digits, '.', '_' or '-', and not "." or "..".
func ValidateSecretID(id string) error { return secretid.Valid(id) }

// checkSecrets checks a request's secrets against the farm's limits before
// anything is sent. Errors name the secret's id and size, never its value.
func checkSecrets(req BuildRequest) error {
	if len(req.Secrets) == 0 {
		return nil
	}
	if req.Spec.GetBuilder() == kilnv1.Builder_BUILDER_CLASSIC {
		return invalidArgumentf("build secrets need the BuildKit builder, but the classic builder was asked for")
	}
	sizes := make(map[string]int, len(req.Secrets)+len(req.Spec.GetSecrets()))
	for id, v := range req.Secrets {
		sizes[id] = len(v)
	}
	for _, s := range req.Spec.GetSecrets() {
		if _, dup := req.Secrets[s.GetId()]; dup {
			return invalidArgumentf("secret id %q is given twice (sealed in the spec and in Secrets)", s.GetId())
		}
		sizes[s.GetId()] = 0 // sealed already: its count matters, not its size
	}
	if err := secretid.CheckSet(sizes); err != nil {
		return invalidArgumentf("%v", err)
	}
	return nil
}

// sealer seals the values of one build: to the farm's key, for the tenant
// the gateway names, with the build's seal nonce.
type sealer struct {
	pub    seal.PublicKey
	keyID  string
	tenant string
	nonce  []byte
}

// newSealer fetches the farm's secrets key and the caller's tenant, for a
// build whose seal nonce is nonce.
func (c *Client) newSealer(ctx context.Context, nonce []byte) (*sealer, error) {
	resp, err := c.builds.GetSecretsKey(ctx, &kilnv1.GetSecretsKeyRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway does not support build secrets (upgrade it): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("fetching the farm's secrets key: %w", err)
	}
	pub, err := seal.PublicKeyFromBytes(resp.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway sent a bad key: %w", err)
	}
	if id := seal.KeyID(pub); resp.GetKeyId() != id {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway named it %q, but its id is %q", resp.GetKeyId(), id)
	}
	return &sealer{pub: pub, keyID: resp.GetKeyId(), tenant: resp.GetTenant(), nonce: nonce}, nil
}

// seal seals each value, in id order.
func (s *sealer) seal(values map[string][]byte) ([]*kilnv1.SealedSecret, error) {
	ids := make([]string, 0, len(values))
	for id := range values {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*kilnv1.SealedSecret, len(ids))
	for i, id := range ids {
		sealed, err := seal.Seal(s.pub, seal.Binding{Tenant: s.tenant, Nonce: s.nonce, ID: id}, values[id])
		if err != nil {
			return nil, fmt.Errorf("sealing %q: %w", id, err)
		}
		out[i] = &kilnv1.SealedSecret{Id: id, Sealed: sealed, KeyId: s.keyID}
	}
	return out, nil
}
