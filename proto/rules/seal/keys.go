package seal

import (
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// KeySize is the size of an X25519 public or private key.
const KeySize = 32

// PublicKey is the farm's X25519 public key for build secrets: anyone may
// seal to it.
type PublicKey [KeySize]byte

// ParsePublicKey parses a base64 public key (standard alphabet, padding
// optional), as String writes it.
func ParsePublicKey(s string) (PublicKey, error) {
	var pub PublicKey
	s = strings.TrimSpace(s)
	data, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		data, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return pub, fmt.Errorf("secrets public key is not base64: %w", err)
	}
	return PublicKeyFromBytes(data)
}

// PublicKeyFromBytes returns the key held in b, which must be KeySize bytes.
func PublicKeyFromBytes(b []byte) (PublicKey, error) {
	var pub PublicKey
	if len(b) != KeySize {
		return pub, fmt.Errorf("secrets public key is %d bytes, want %d", len(b), KeySize)
	}
	copy(pub[:], b)
	return pub, nil
}

// String returns the key in base64, the form ParsePublicKey reads.
func (p PublicKey) String() string { return base64.StdEncoding.EncodeToString(p[:]) }

// KeyID names a public key: the first 16 hex digits of its SHA-256. A
// sealed value carries the id of the key it was sealed to, so the farm can
// tell a client that sealed to a key it no longer has.
func KeyID(pub PublicKey) string {
	sum := sha256.Sum256(pub[:])
	return hex.EncodeToString(sum[:8])
}

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

// PrivateKeyFromBytes derives the key pair from a private key's bytes.
// Its errors never hold the bytes.
func PrivateKeyFromBytes(b []byte) (*PrivateKey, error) {
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

// Bytes returns a copy of the private key's bytes, for the key file alone:
// never log or send them.
func (k *PrivateKey) Bytes() []byte { return append([]byte(nil), k.priv[:]...) }

// PublicKey returns the public half, the key clients seal to.
func (k *PrivateKey) PublicKey() PublicKey { return k.pub }

// KeyID returns KeyID(k.PublicKey()).
func (k *PrivateKey) KeyID() string { return KeyID(k.pub) }

// Open returns the value sealed in sealed for binding b. Its errors never
// hold the value or the sealed bytes: ErrCannotOpen when the key does not
// fit or the bytes were altered, ErrWrongBinding when the value was sealed
// for another tenant, build or id, or an error naming the size or the
// nonce's length when it cannot be a sealed value for b.
func (k *PrivateKey) Open(b Binding, sealed []byte) ([]byte, error) {
	pub := [KeySize]byte(k.pub)
	return open(&pub, &k.priv, b, sealed)
}

// String names the key by its id, never its bytes.
func (k *PrivateKey) String() string { return "secrets key " + k.KeyID() }

// GoString keeps %#v from printing the private bytes.
func (k *PrivateKey) GoString() string { return "seal.PrivateKey{id: " + k.KeyID() + "}" }

// LogValue makes slog log the key id only.
func (k *PrivateKey) LogValue() slog.Value { return slog.StringValue(k.String()) }
