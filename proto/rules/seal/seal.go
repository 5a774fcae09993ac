package seal

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/nacl/box"

	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/secretid"
)

const (
	// version is the envelope's first byte.
	version = 1
	// envelopeHeader is what the envelope adds to a value: the version and
	// the binding's digest.
	envelopeHeader = 1 + sha256.Size
	// Overhead is what sealing adds to a value: the box's one-time public
	// key and authenticator, and the envelope's header.
	Overhead = box.AnonymousOverhead + envelopeHeader
	// MaxValueBytes bounds a value Seal takes: the largest build secret.
	MaxValueBytes = secretid.MaxValueBytes
	// MaxSealedBytes bounds one sealed value.
	MaxSealedBytes = MaxValueBytes + Overhead
	// MinNonceBytes is the shortest seal nonce: 128 random bits, so two
	// builds never pick the same one by chance.
	MinNonceBytes = 16
	// MaxNonceBytes is the longest seal nonce.
	MaxNonceBytes = 64
	// nonceBytes is the length of the nonces NewNonce makes.
	nonceBytes = 24
)

var (
	// ErrCannotOpen: a sealed value does not open with the key, because it
	// was sealed to another key or was altered.
	ErrCannotOpen = errors.New("sealed value does not open with this farm's secrets key (sealed to another key, or corrupted)")
	// ErrWrongBinding: a sealed value opens with the key but was sealed for
	// another tenant, another build (seal nonce) or another id: it was
	// copied from elsewhere.
	ErrWrongBinding = errors.New("sealed for another build or tenant")
)

// Binding is what a sealed value is bound to: Open gives the value back
// only for the binding it was sealed with.
type Binding struct {
	// Tenant owns the build (GetSecretsKeyResponse.tenant when sealing,
	// Build.tenant when opening).
	Tenant string
	// Nonce is the build's BuildSpec.seal_nonce, MinNonceBytes to
	// MaxNonceBytes random bytes chosen by the client for this build alone.
	Nonce []byte
	// ID names the value: the secret id, or the registry host of a
	// registry credential.
	ID string
}

// digest is SHA-256 of the binding's parts, each length-prefixed after a
// domain-separation label, so no two bindings share an encoding.
func (b Binding) digest() [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte("kiln sealed value v1\x00"))
	for _, part := range [][]byte{[]byte(b.Tenant), b.Nonce, []byte(b.ID)} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// CheckNonce checks a build's seal nonce: a build that carries sealed
// values needs MinNonceBytes to MaxNonceBytes of it.
func CheckNonce(nonce []byte) error {
	if n := len(nonce); n < MinNonceBytes || n > MaxNonceBytes {
		return rules.Invalidf("seal_nonce is %d bytes: a build with sealed secrets or registry credentials needs a fresh random seal_nonce of %d to %d bytes, the one its values were sealed with", n, MinNonceBytes, MaxNonceBytes)
	}
	return nil
}

// NewNonce returns a fresh random seal nonce for one build.
func NewNonce() ([]byte, error) {
	n := make([]byte, nonceBytes)
	if _, err := io.ReadFull(rand.Reader, n); err != nil {
		return nil, fmt.Errorf("make seal nonce: %w", err)
	}
	return n, nil
}

// Seal seals value to pub, bound to b: the result opens only with pub's
// private key and the same binding, and sealing the same value again gives
// other bytes. Values over MaxValueBytes and bindings without a valid
// nonce are refused; errors never hold the value.
func Seal(pub PublicKey, b Binding, value []byte) ([]byte, error) {
	if len(value) > MaxValueBytes {
		return nil, rules.Invalidf("sealed value %q is %d bytes, over the limit of %d bytes", b.ID, len(value), MaxValueBytes)
	}
	if err := CheckNonce(b.Nonce); err != nil {
		return nil, fmt.Errorf("seal %q: %w", b.ID, err)
	}
	env := make([]byte, 0, envelopeHeader+len(value))
	d := b.digest()
	env = append(append(append(env, version), d[:]...), value...)
	k := [KeySize]byte(pub)
	out, err := box.SealAnonymous(make([]byte, 0, len(env)+box.AnonymousOverhead), env, &k, rand.Reader)
	clear(env)
	if err != nil {
		return nil, fmt.Errorf("seal %q: %w", b.ID, err)
	}
	return out, nil
}

// open opens sealed with the key pair and checks its envelope against b.
func open(pub, priv *[KeySize]byte, b Binding, sealed []byte) ([]byte, error) {
	switch {
	case len(sealed) < Overhead:
		return nil, fmt.Errorf("sealed value is %d bytes, shorter than the %d bytes sealing adds", len(sealed), Overhead)
	case len(sealed) > MaxSealedBytes:
		return nil, fmt.Errorf("sealed value is %d bytes, over the limit of %d bytes", len(sealed), MaxSealedBytes)
	}
	if err := CheckNonce(b.Nonce); err != nil {
		return nil, err
	}
	env, ok := box.OpenAnonymous(make([]byte, 0, len(sealed)-box.AnonymousOverhead), sealed, pub, priv)
	if !ok {
		return nil, ErrCannotOpen
	}
	d := b.digest()
	if env[0] != version || subtle.ConstantTimeCompare(env[1:envelopeHeader], d[:]) != 1 {
		clear(env)
		return nil, ErrWrongBinding
	}
	return env[envelopeHeader:], nil
}
