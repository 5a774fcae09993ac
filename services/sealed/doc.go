// Package sealed keeps the farm's secrets key on the hosts that hold it:
// the key file the agents open build secrets with (LoadPrivateKey,
// LoadOrCreatePrivateKey), from which kilnd and a gateway may also derive
// the public key clients seal to.
//
// Sealing itself, the envelope that binds a value to its tenant and build,
// and the rules of secret ids and registry hosts live in the proto module
// (proto/rules/seal, proto/rules/secretid, proto/rules/registryhost), which
// the SDK imports too: one copy of each rule. PrivateKey, PublicKey, KeyID,
// ParsePublicKey and GenerateKey here are that package's, named again for
// the server's callers.
package sealed

import (
	"io"

	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// PrivateKey is seal.PrivateKey: the farm's key pair, which agents open
// sealed values with.
type PrivateKey = seal.PrivateKey

// PublicKey is seal.PublicKey: the key clients seal to.
type PublicKey = seal.PublicKey

// KeyID names a public key (seal.KeyID).
func KeyID(pub PublicKey) string { return seal.KeyID(pub) }

// ParsePublicKey parses a base64 public key (seal.ParsePublicKey).
func ParsePublicKey(s string) (PublicKey, error) { return seal.ParsePublicKey(s) }

// GenerateKey makes a new key pair (seal.GenerateKey).
func GenerateKey(rand io.Reader) (*PrivateKey, error) { return seal.GenerateKey(rand) }
