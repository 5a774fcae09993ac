// Package sshid holds the rules of a build's ssh keys (BuildSpec.ssh,
// buildx --ssh ID=PATH[,PATH...]): what an ssh id may be, how many keys a
// build may carry and how large, and what a key must be: a private key in
// PEM or OpenSSH format that needs no passphrase. The CLI checks them when
// it reads --ssh, the SDK before it seals, the gateway when it accepts a
// spec (ids and sizes: it never sees the keys), the agent when it opens the
// keys to serve them to RUN --mount=type=ssh steps.
//
// The keys of one ssh id travel as one value: their PEM blocks,
// concatenated (Keys makes it from key files, Parse reads it back), sealed
// to the farm's secrets key like a build secret, bound to the ssh id.
//
// Errors match rules.ErrInvalid. They name an ssh id, a file or a key's
// position, never a key's bytes.
package sshid

import (
	"bytes"
	"encoding/pem"
	"errors"
	"regexp"

	"golang.org/x/crypto/ssh"

	"github.com/kilnbuild/kiln/proto/rules"
)

const (
	// DefaultID is the ssh id of RUN --mount=type=ssh without id=, and of
	// --ssh default.
	DefaultID = "default"
	// MaxIDs bounds the ssh ids of one build.
	MaxIDs = 16
	// MaxKeysPerID bounds the keys of one ssh id.
	MaxKeysPerID = 16
	// MaxKeyBytes bounds one key's PEM block (a 16384-bit RSA key's is
	// under 13 KiB; an ed25519 key's about 400 bytes).
	MaxKeyBytes = 16 << 10
	// MaxValueBytes bounds the keys of one ssh id together.
	MaxValueBytes = 64 << 10
	// MaxTotalBytes bounds the keys of one build together, so that the
	// build record that carries them sealed stays well inside NATS's
	// default 1 MiB message limit beside the build's secrets.
	MaxTotalBytes = 64 << 10
	// MaxIDLen bounds an ssh id, in bytes.
	MaxIDLen = 128
)

var (
	// ErrEncrypted: a key needs a passphrase, which nobody can type on
	// the farm.
	ErrEncrypted = errors.New("the key is encrypted with a passphrase")
	// ErrNoKey: the data holds no PEM block (a public key, or not a key).
	ErrNoKey = errors.New("no private key in PEM or OpenSSH format")
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Valid checks an ssh id: 1 to MaxIDLen letters, digits, '.', '_' or '-'
// (BuildKit takes any string; kiln keeps ids to names, as it does secret
// ids). The error quotes the id.
func Valid(id string) error {
	switch {
	case id == "":
		return rules.Invalidf("ssh id is empty")
	case len(id) > MaxIDLen:
		return rules.Invalidf("ssh id %.32q… is %d bytes, at most %d allowed", id, len(id), MaxIDLen)
	case !idRE.MatchString(id):
		return rules.Invalidf("ssh id %q may hold only letters, digits, '.', '_' and '-'", id)
	}
	return nil
}

// CheckSet checks the ssh keys of one build, given by ssh id with the
// size of their value: the count of ids, the ids, each value's size and
// the total.
func CheckSet(sizes map[string]int) error {
	if n := len(sizes); n > MaxIDs {
		return rules.Invalidf("%d ssh ids given, at most %d allowed", n, MaxIDs)
	}
	total := 0
	for id, n := range sizes {
		if err := Valid(id); err != nil {
			return err
		}
		if n > MaxValueBytes {
			return rules.Invalidf("the keys of ssh id %q are %d bytes, over the limit of %d bytes", id, n, MaxValueBytes)
		}
		total += n
	}
	if total > MaxTotalBytes {
		return rules.Invalidf("the build's ssh keys are %d bytes together, over the limit of %d bytes", total, MaxTotalBytes)
	}
	return nil
}

// Key checks one key file's data and returns its private key's PEM block,
// re-encoded, as Keys concatenates it: the file's first PEM block, which
// must be a private key ssh can sign with (RSA, ECDSA, ed25519; PEM,
// PKCS#8 or OpenSSH format) and need no passphrase (the error then matches
// ErrEncrypted). Text around the block is dropped, as ssh does.
func Key(data []byte) ([]byte, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, &violation{ErrNoKey}
	}
	out := pem.EncodeToMemory(block)
	if len(out) > MaxKeyBytes {
		return nil, rules.Invalidf("the key is %d bytes, over the limit of %d bytes", len(out), MaxKeyBytes)
	}
	if _, err := parseBlock(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Keys returns the value of one ssh id: the private key of each key
// file's data (see Key), concatenated, at most MaxKeysPerID of them and
// MaxValueBytes together. Errors name a file by its index in files.
func Keys(files [][]byte) ([]byte, error) {
	if len(files) == 0 {
		return nil, rules.Invalidf("no key given")
	}
	if len(files) > MaxKeysPerID {
		return nil, rules.Invalidf("%d keys given, at most %d allowed", len(files), MaxKeysPerID)
	}
	var out []byte
	for i, f := range files {
		k, err := Key(f)
		if err != nil {
			return nil, &keyError{index: i, err: err}
		}
		out = append(out, k...)
	}
	if len(out) > MaxValueBytes {
		return nil, rules.Invalidf("the keys are %d bytes together, over the limit of %d bytes", len(out), MaxValueBytes)
	}
	return out, nil
}

// KeyIndex returns the index of the key file an error of Keys is about,
// or -1.
func KeyIndex(err error) int {
	var ke *keyError
	if errors.As(err, &ke) {
		return ke.index
	}
	return -1
}

// keyError is an error of Keys about one key file.
type keyError struct {
	index int
	err   error
}

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

// Parse reads the value of one ssh id back (what Keys made, opened on the
// agent): its private keys, in order, as ssh.ParseRawPrivateKey returns
// them. Errors name a key by its position (from 1).
func Parse(value []byte) ([]any, error) {
	if len(value) > MaxValueBytes {
		return nil, rules.Invalidf("the keys are %d bytes together, over the limit of %d bytes", len(value), MaxValueBytes)
	}
	var keys []any
	rest := value
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			break
		}
		if len(keys) == MaxKeysPerID {
			return nil, rules.Invalidf("more than %d keys given", MaxKeysPerID)
		}
		k, err := parseBlock(pem.EncodeToMemory(block))
		if err != nil {
			return nil, rules.Invalidf("key %d: %v", len(keys)+1, err)
		}
		keys = append(keys, k)
		rest = next
	}
	switch {
	case len(keys) == 0:
		return nil, &violation{ErrNoKey}
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, rules.Invalidf("%d bytes after the last key are not a PEM block", len(rest))
	}
	return keys, nil
}

// parseBlock parses one PEM-encoded private key and checks that ssh can
// sign with it. Its errors never hold the key's bytes.
func parseBlock(data []byte) (any, error) {
	k, err := ssh.ParseRawPrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, &violation{ErrEncrypted}
	case err != nil:
		return nil, rules.Invalidf("not a private key ssh can use: %v", err)
	}
	if _, err := ssh.NewSignerFromKey(k); err != nil {
		return nil, rules.Invalidf("not a private key ssh can sign with: %v", err)
	}
	return k, nil
}

// violation is a rule's sentinel error, matching both the sentinel and
// rules.ErrInvalid.
type violation struct{ err error }

func (v *violation) Error() string { return v.err.Error() }
func (v *violation) Is(target error) bool {
	return target == v.err || target == rules.ErrInvalid
}
