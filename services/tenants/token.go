package tenants

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// TokenPrefix starts every token kiln makes, so a leaked one is easy to
// recognise (secret scanners, logs).
const TokenPrefix = "kiln_"

// tokenBytes is the randomness of a token: 256 bits.
const tokenBytes = 32

// tokenEncoding spells a token's random part: lower-case base32, no padding.
var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewToken returns a fresh random token: "kiln_" and 256 random bits in
// base32.
func NewToken() (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make token: %w", err)
	}
	return TokenPrefix + tokenEncoding.EncodeToString(b), nil
}

// Argon2id parameters of new hashes: OWASP's recommendation (19 MiB, two
// passes, one lane), ~20 ms per verification on one core. Verification
// uses the parameters stored in each hash.
const (
	argonMemoryKiB = 19 * 1024
	argonTime      = 2
	argonThreads   = 1
	argonKeyLen    = 32
	argonSaltLen   = 16
)

// Bounds on the parameters a stored hash may ask for, so a hostile or
// mistyped tenants file cannot make verification take the machine.
const (
	maxArgonMemoryKiB = 1 << 20 // 1 GiB
	maxArgonTime      = 16
	maxArgonThreads   = 16
	maxArgonKeyLen    = 64
	minArgonKeyLen    = 16
	maxArgonSaltLen   = 64
	minArgonSaltLen   = 8
)

// HashToken returns token's argon2id hash as a PHC string,
// "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>" (unpadded standard base64).
func HashToken(token string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash token: %w", err)
	}
	key := argon2.IDKey([]byte(token), salt, argonTime, argonMemoryKiB, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemoryKiB, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// tokenHash is one parsed token hash of a tenants file.
type tokenHash struct {
	// phc is the hash as written in the file; it identifies the credential
	// (see Identity.Credential).
	phc string
	// argon2id: parameters, salt and key. bcrypt: bcrypt set, the rest zero.
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
	bcrypt  bool
}

// ErrBadHash is returned for a token hash in an unrecognised format.
var ErrBadHash = errors.New("token hash is not an argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash) or a bcrypt hash ($2a$/$2b$/$2y$)")

// ParseHash parses a stored token hash: argon2id in PHC form, or bcrypt.
// Errors never quote the hash.
func ParseHash(s string) (tokenHash, error) {
	if strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$") {
		if _, err := bcrypt.Cost([]byte(s)); err != nil || len(s) != 60 {
			return tokenHash{}, fmt.Errorf("%w: malformed bcrypt hash", ErrBadHash)
		}
		return tokenHash{phc: s, bcrypt: true}, nil
	}
	parts := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=…,t=…,p=…", salt, hash
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return tokenHash{}, ErrBadHash
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return tokenHash{}, fmt.Errorf("%w: argon2id version must be v=%d", ErrBadHash, argon2.Version)
	}
	h := tokenHash{phc: s}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return tokenHash{}, fmt.Errorf("%w: argon2id parameters must be m=…,t=…,p=…", ErrBadHash)
	}
	for i, want := range []string{"m", "t", "p"} {
		k, v, ok := strings.Cut(params[i], "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || k != want || err != nil || n == 0 || (len(v) > 1 && v[0] == '0') {
			return tokenHash{}, fmt.Errorf("%w: argon2id parameters must be m=…,t=…,p=… with positive integers", ErrBadHash)
		}
		switch want {
		case "m":
			if n > maxArgonMemoryKiB {
				return tokenHash{}, fmt.Errorf("%w: argon2id memory m=%d KiB is over %d", ErrBadHash, n, maxArgonMemoryKiB)
			}
			h.memory = uint32(n)
		case "t":
			if n > maxArgonTime {
				return tokenHash{}, fmt.Errorf("%w: argon2id time t=%d is over %d", ErrBadHash, n, maxArgonTime)
			}
			h.time = uint32(n)
		case "p":
			if n > maxArgonThreads {
				return tokenHash{}, fmt.Errorf("%w: argon2id parallelism p=%d is over %d", ErrBadHash, n, maxArgonThreads)
			}
			h.threads = uint8(n)
		}
	}
	if h.memory < 8*uint32(h.threads) {
		return tokenHash{}, fmt.Errorf("%w: argon2id memory must be at least 8 KiB per lane", ErrBadHash)
	}
	var err error
	if h.salt, err = base64.RawStdEncoding.Strict().DecodeString(parts[4]); err != nil || len(h.salt) < minArgonSaltLen || len(h.salt) > maxArgonSaltLen {
		return tokenHash{}, fmt.Errorf("%w: argon2id salt must be %d to %d bytes of unpadded base64", ErrBadHash, minArgonSaltLen, maxArgonSaltLen)
	}
	if h.key, err = base64.RawStdEncoding.Strict().DecodeString(parts[5]); err != nil || len(h.key) < minArgonKeyLen || len(h.key) > maxArgonKeyLen {
		return tokenHash{}, fmt.Errorf("%w: argon2id hash must be %d to %d bytes of unpadded base64", ErrBadHash, minArgonKeyLen, maxArgonKeyLen)
	}
	return h, nil
}

// verify reports whether token matches the hash, in time independent of
// where they differ.
func (h tokenHash) verify(token string) bool {
	if h.bcrypt {
		return bcrypt.CompareHashAndPassword([]byte(h.phc), []byte(token)) == nil
	}
	key := argon2.IDKey([]byte(token), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(key, h.key) == 1
}

// tokenKey is what the verified-token cache is keyed by: the token's
// SHA-256, so the cache holds no token.
type tokenKey [sha256.Size]byte

func keyOf(token string) tokenKey { return sha256.Sum256([]byte(token)) }
