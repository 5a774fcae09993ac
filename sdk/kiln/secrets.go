package kiln

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"golang.org/x/crypto/nacl/box"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Build secrets (BuildRequest.Secrets) are sealed here, on the client, to
// the farm's secrets key: an anonymous NaCl box that only the farm's agents
// can open. The gateway, NATS and the farm's records see the ids and the
// sealed bytes only. The limits below are the farm's (package sealed of the
// services module, which the SDK does not import); the gateway checks them
// again.
const (
	// MaxSecretBytes bounds one secret's value (500 KiB, as BuildKit).
	MaxSecretBytes = 500 << 10
	// MaxTotalSecretBytes bounds the values of one build's secrets together.
	MaxTotalSecretBytes = 512 << 10
	// MaxSecrets bounds the number of secrets of one build.
	MaxSecrets = 100
	// maxSecretIDLen bounds a secret id, in bytes.
	maxSecretIDLen = 128
	// secretsKeySize is the size of the farm's X25519 public key.
	secretsKeySize = 32
)

var secretIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// ValidateSecretID checks a secret id as the farm does: 1 to 128 letters,
// digits, '.', '_' or '-', and not "." or "..".
func ValidateSecretID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("secret id is empty")
	case len(id) > maxSecretIDLen:
		return fmt.Errorf("secret id %.32q… is %d bytes, at most %d allowed", id, len(id), maxSecretIDLen)
	case id == "." || id == "..":
		return fmt.Errorf("secret id %q is not allowed", id)
	case !secretIDRE.MatchString(id):
		return fmt.Errorf("secret id %q may hold only letters, digits, '.', '_' and '-'", id)
	}
	return nil
}

// checkSecrets checks a request's secrets against the farm's limits before
// anything is sent. Errors name the secret's id and size, never its value.
func checkSecrets(req BuildRequest) error {
	if len(req.Secrets) == 0 {
		return nil
	}
	if n := len(req.Secrets) + len(req.Spec.GetSecrets()); n > MaxSecrets {
		return invalidArgumentf("%d build secrets given, at most %d allowed", n, MaxSecrets)
	}
	if req.Spec.GetBuilder() == kilnv1.Builder_BUILDER_CLASSIC {
		return invalidArgumentf("build secrets need the BuildKit builder, but the classic builder was asked for")
	}
	total := 0
	for id, v := range req.Secrets {
		if err := ValidateSecretID(id); err != nil {
			return invalidArgumentf("%v", err)
		}
		if len(v) > MaxSecretBytes {
			return invalidArgumentf("secret %q is %d bytes, over the limit of %d bytes", id, len(v), MaxSecretBytes)
		}
		total += len(v)
	}
	if total > MaxTotalSecretBytes {
		return invalidArgumentf("the build's secrets are %d bytes together, over the limit of %d bytes", total, MaxTotalSecretBytes)
	}
	for _, s := range req.Spec.GetSecrets() {
		if _, dup := req.Secrets[s.GetId()]; dup {
			return invalidArgumentf("secret id %q is given twice (sealed in the spec and in Secrets)", s.GetId())
		}
	}
	return nil
}

// sealSecrets fetches the farm's secrets key and seals each secret to it,
// in id order.
func (c *Client) sealSecrets(ctx context.Context, secrets map[string][]byte) ([]*kilnv1.SealedSecret, error) {
	resp, err := c.builds.GetSecretsKey(ctx, &kilnv1.GetSecretsKeyRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway does not support build secrets (upgrade it): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("fetching the farm's secrets key: %w", err)
	}
	if len(resp.GetPublicKey()) != secretsKeySize {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway sent a %d-byte key, want %d bytes", len(resp.GetPublicKey()), secretsKeySize)
	}
	var pub [secretsKeySize]byte
	copy(pub[:], resp.GetPublicKey())
	sum := sha256.Sum256(pub[:])
	if id := hex.EncodeToString(sum[:8]); resp.GetKeyId() != id {
		return nil, fmt.Errorf("fetching the farm's secrets key: the gateway named it %q, but its id is %q", resp.GetKeyId(), id)
	}
	ids := make([]string, 0, len(secrets))
	for id := range secrets {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*kilnv1.SealedSecret, len(ids))
	for i, id := range ids {
		sealed, err := box.SealAnonymous(nil, secrets[id], &pub, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("sealing secret %q: %w", id, err)
		}
		out[i] = &kilnv1.SealedSecret{Id: id, Sealed: sealed, KeyId: resp.GetKeyId()}
	}
	return out, nil
}
