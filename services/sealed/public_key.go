package sealed

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

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
	if len(data) != KeySize {
		return pub, fmt.Errorf("secrets public key is %d bytes, want %d", len(data), KeySize)
	}
	copy(pub[:], data)
	return pub, nil
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
// sealed secret carries the id of the key it was sealed to, so the farm can
// tell a client that sealed to a key it no longer has.
func KeyID(pub PublicKey) string {
	sum := sha256.Sum256(pub[:])
	return hex.EncodeToString(sum[:8])
}

// Seal seals plaintext to pub with an anonymous box: the result opens only
// with pub's private key, and sealing the same plaintext again gives other
// bytes. Values over MaxSecretBytes are refused.
func Seal(pub PublicKey, plaintext []byte) ([]byte, error) {
	if len(plaintext) > MaxSecretBytes {
		return nil, fmt.Errorf("secret is %d bytes, over the limit of %d bytes", len(plaintext), MaxSecretBytes)
	}
	k := [KeySize]byte(pub)
	out, err := box.SealAnonymous(make([]byte, 0, len(plaintext)+Overhead), plaintext, &k, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal secret: %w", err)
	}
	return out, nil
}
