// Package secretid holds the rules of build secrets (BuildSpec.secrets,
// buildx --secret): what a secret id may be and how many and how large a
// build's secrets may be. The CLI checks them when it reads --secret, the
// SDK before it seals, the gateway when it accepts a spec.
//
// Errors match rules.ErrInvalid. They name a secret by its id, never by
// its value.
package secretid

import (
	"regexp"

	"github.com/kilnbuild/kiln/proto/rules"
)

const (
	// MaxValueBytes bounds one secret's value, as BuildKit's
	// secretsprovider does (500 KiB).
	MaxValueBytes = 500 << 10
	// MaxTotalBytes bounds the values of one build's secrets together, so
	// the build record that carries them sealed stays well inside NATS's
	// default 1 MiB message limit.
	MaxTotalBytes = 512 << 10
	// MaxSecrets bounds the number of secrets of one build.
	MaxSecrets = 100
	// MaxIDLen bounds a secret id, in bytes.
	MaxIDLen = 128
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Valid checks a secret id: 1 to MaxIDLen letters, digits, '.', '_' or
// '-', and not "." or "..", since BuildKit mounts a secret at
// /run/secrets/<id>. The error quotes the id (an id is a name, never a
// value).
func Valid(id string) error {
	switch {
	case id == "":
		return rules.Invalidf("secret id is empty")
	case len(id) > MaxIDLen:
		return rules.Invalidf("secret id %.32q… is %d bytes, at most %d allowed", id, len(id), MaxIDLen)
	case id == "." || id == "..":
		return rules.Invalidf("secret id %q is not allowed", id)
	case !idRE.MatchString(id):
		return rules.Invalidf("secret id %q may hold only letters, digits, '.', '_' and '-'", id)
	}
	return nil
}

// CheckValue checks one secret's size.
func CheckValue(id string, size int) error {
	if size > MaxValueBytes {
		return rules.Invalidf("secret %q is %d bytes, over the limit of %d bytes", id, size, MaxValueBytes)
	}
	return nil
}

// CheckSet checks the secrets of one build, given by id with their
// sizes: their count, ids, sizes and total size.
func CheckSet(sizes map[string]int) error {
	if n := len(sizes); n > MaxSecrets {
		return rules.Invalidf("%d build secrets given, at most %d allowed", n, MaxSecrets)
	}
	total := 0
	for id, n := range sizes {
		if err := Valid(id); err != nil {
			return err
		}
		if err := CheckValue(id, n); err != nil {
			return err
		}
		total += n
	}
	return CheckTotal(total)
}

// CheckTotal checks the size of a build's secrets together.
func CheckTotal(total int) error {
	if total > MaxTotalBytes {
		return rules.Invalidf("the build's secrets are %d bytes together, over the limit of %d bytes", total, MaxTotalBytes)
	}
	return nil
}
