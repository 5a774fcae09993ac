package sealed

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// A key file holds the private key in base64 and a newline, mode 0600.

// LoadPrivateKey reads the farm's secrets key from path. It refuses a file
// that group or others may read or write, as ssh does with private keys.
// Its errors never hold the file's content.
func LoadPrivateKey(path string) (*PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secrets key file %s has mode %04o, open to group or others: run chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(raw) != seal.KeySize {
		return nil, fmt.Errorf("secrets key file %s does not hold a base64 %d-byte X25519 private key", path, seal.KeySize)
	}
	return seal.PrivateKeyFromBytes(raw)
}

// LoadOrCreatePrivateKey loads the key at path, or, when there is no file
// there, generates a key and writes it (mode 0600, creating the directory
// with mode 0700). Two processes racing to create it end up with the same
// key: the file appears complete or not at all, and only the first wins.
func LoadOrCreatePrivateKey(path string) (*PrivateKey, error) {
	k, err := LoadPrivateKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k, err = GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	if err := writeKeyFile(k, path); errors.Is(err, fs.ErrExist) {
		return LoadPrivateKey(path)
	} else if err != nil {
		return nil, err
	}
	return k, nil
}

// writeKeyFile writes the key to a temporary file and links it into place,
// which fails with fs.ErrExist if path exists.
func writeKeyFile(k *PrivateKey, path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".secrets-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(base64.StdEncoding.EncodeToString(k.Bytes()) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("write secrets key file: %w", err)
	}
	return nil
}
