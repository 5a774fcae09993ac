package sealed

import (
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// ErrCannotOpen: a sealed value does not open with the key, because it was
// sealed to another key or was altered.
var ErrCannotOpen = errors.New("sealed secret does not open with this farm's secrets key (sealed to another key, or corrupted)")

// PrivateKey is the farm's X25519 key pair for build secrets; agents hold
// it to open what clients sealed. It prints as its key id only, so logging
// one by mistake leaks nothing.
type PrivateKey struct {
	priv [KeySize]byte
	pub  PublicKey
}

// GenerateKey makes a new key pair from rand (crypto/rand.Reader when nil).
func GenerateKey(rand io.Reader) (*PrivateKey, error) {
	if rand == nil {
		rand = cryptorand.Reader
	}
	pub, priv, err := box.GenerateKey(rand)
	if err != nil {
		return nil, fmt.Errorf("generate secrets key: %w", err)
	}
	return &PrivateKey{priv: *priv, pub: *pub}, nil
}

// privateKeyFromBytes derives the key pair from a private key's bytes.
func privateKeyFromBytes(b []byte) (*PrivateKey, error) {
	if len(b) != KeySize {
		return nil, fmt.Errorf("secrets private key is %d bytes, want %d", len(b), KeySize)
	}
	k := &PrivateKey{}
	copy(k.priv[:], b)
	pub, err := curve25519.X25519(k.priv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("derive secrets public key: %w", err)
	}
	copy(k.pub[:], pub)
	return k, nil
}

// PublicKey returns the public half, the key clients seal to.
func (k *PrivateKey) PublicKey() PublicKey { return k.pub }

// KeyID returns KeyID(k.PublicKey()).
func (k *PrivateKey) KeyID() string { return KeyID(k.pub) }

// Open returns the value sealed in sealed. Its errors never hold the value
// or the sealed bytes: ErrCannotOpen when the key does not fit or the bytes
// were altered, or an error naming the size when it cannot be a sealed
// secret.
func (k *PrivateKey) Open(sealed []byte) ([]byte, error) {
	switch {
	case len(sealed) < Overhead:
		return nil, fmt.Errorf("sealed secret is %d bytes, shorter than the %d bytes sealing adds", len(sealed), Overhead)
	case len(sealed) > MaxSealedBytes:
		return nil, fmt.Errorf("sealed secret is %d bytes, over the limit of %d bytes", len(sealed), MaxSealedBytes)
	}
	pub := [KeySize]byte(k.pub)
	out, ok := box.OpenAnonymous(make([]byte, 0, len(sealed)-Overhead), sealed, &pub, &k.priv)
	if !ok {
		return nil, ErrCannotOpen
	}
	return out, nil
}

// String names the key by its id, never its bytes.
func (k *PrivateKey) String() string { return "secrets key " + k.KeyID() }

// GoString keeps %#v from printing the private bytes.
func (k *PrivateKey) GoString() string { return "sealed.PrivateKey{id: " + k.KeyID() + "}" }

// LogValue makes slog log the key id only.
func (k *PrivateKey) LogValue() slog.Value { return slog.StringValue(k.String()) }
