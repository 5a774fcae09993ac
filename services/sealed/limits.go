package sealed

import (
	"fmt"
	"regexp"

	"golang.org/x/crypto/nacl/box"
)

const (
	// MaxSecretBytes bounds one secret's value, as BuildKit's
	// secretsprovider does (500 KiB).
	MaxSecretBytes = 500 << 10
	// MaxTotalSecretBytes bounds the values of one build's secrets
	// together, so the build record that carries them sealed stays well
	// inside NATS's default 1 MiB message limit.
	MaxTotalSecretBytes = 512 << 10
	// MaxSecrets bounds the number of secrets of one build.
	MaxSecrets = 100
	// MaxIDLen bounds a secret id, in bytes.
	MaxIDLen = 128
	// Overhead is what sealing adds to a value: the one-time public key
	// and the authenticator.
	Overhead = box.AnonymousOverhead
	// MaxSealedBytes bounds one sealed value.
	MaxSealedBytes = MaxSecretBytes + Overhead
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// ValidID checks a secret id: 1 to 128 letters, digits, '.', '_' or '-',
// and not "." or "..", since BuildKit mounts a secret at /run/secrets/<id>.
// The error quotes the id (an id is a name, never a value).
func ValidID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("secret id is empty")
	case len(id) > MaxIDLen:
		return fmt.Errorf("secret id %.32q… is %d bytes, at most %d allowed", id, len(id), MaxIDLen)
	case id == "." || id == "..":
		return fmt.Errorf("secret id %q is not allowed", id)
	case !idRE.MatchString(id):
		return fmt.Errorf("secret id %q may hold only letters, digits, '.', '_' and '-'", id)
	}
	return nil
}
