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
	// MaxRegistryAuth bounds the registries one build carries credentials
	// for (BuildSpec.registry_auth).
	MaxRegistryAuth = 32
	// MaxRegistryAuthBytes bounds one registry credential, sealed.
	MaxRegistryAuthBytes = 16<<10 + Overhead
)

var hostRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:]+\])(:[0-9]{1,5})?$`)

// ValidRegistryHost checks the id of a registry credential: a registry
// host as docker config names it, lower-case, with an optional port
// ("ghcr.io", "127.0.0.1:5000", "docker.io").
func ValidRegistryHost(host string) error {
	if len(host) > MaxIDLen || !hostRE.MatchString(host) {
		return fmt.Errorf("registry %.64q is not a registry host (like ghcr.io or 127.0.0.1:5000, lower case)", host)
	}
	return nil
}

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
