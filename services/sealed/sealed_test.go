package sealed

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func mustKey(t testing.TB) *PrivateKey {
	t.Helper()
	k, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	k := mustKey(t)
	tests := []struct {
		name  string
		value []byte
	}{
		{name: "empty", value: []byte{}},
		{name: "token", value: []byte("ghp_0123456789abcdef")},
		{name: "binary", value: []byte{0, 1, 2, 0xff, '\n'}},
		{name: "largest allowed", value: bytes.Repeat([]byte("s"), MaxSecretBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := Seal(k.PublicKey(), tt.value)
			if err != nil {
				t.Fatal(err)
			}
			if len(sealed) != len(tt.value)+Overhead {
				t.Errorf("sealed %d bytes into %d, want %d", len(tt.value), len(sealed), len(tt.value)+Overhead)
			}
			if len(tt.value) >= 8 && bytes.Contains(sealed, tt.value[:8]) {
				t.Error("the sealed value holds the plaintext")
			}
			got, err := k.Open(sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.value) {
				t.Errorf("opened %d bytes, want the %d sealed", len(got), len(tt.value))
			}
		})
	}
}

func TestSealIsRandomized(t *testing.T) {
	k := mustKey(t)
	a, _ := Seal(k.PublicKey(), []byte("same value"))
	b, _ := Seal(k.PublicKey(), []byte("same value"))
	if bytes.Equal(a, b) {
		t.Fatal("sealing the same value twice gave the same bytes")
	}
}

func TestSealRefusesTooLarge(t *testing.T) {
	k := mustKey(t)
	secret := bytes.Repeat([]byte("P"), MaxSecretBytes+1)
	_, err := Seal(k.PublicKey(), secret)
	if err == nil || !strings.Contains(err.Error(), "over the limit") || strings.Contains(err.Error(), "PPPP") {
		t.Fatalf("Seal of %d bytes = %v, want a size error without the value", len(secret), err)
	}
}

func TestOpenFailures(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	const secret = "correct horse battery staple"
	sealed, err := Seal(k.PublicKey(), []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	tests := []struct {
		name   string
		key    *PrivateKey
		sealed []byte
		want   string
	}{
		{name: "wrong key", key: other, sealed: sealed, want: "does not open"},
		{name: "altered byte", key: k, sealed: flipped, want: "does not open"},
		{name: "truncated", key: k, sealed: sealed[:len(sealed)-1], want: "does not open"},
		{name: "shorter than the overhead", key: k, sealed: sealed[:Overhead-1], want: "shorter than"},
		{name: "nil", key: k, sealed: nil, want: "shorter than"},
		{name: "too large", key: k, sealed: make([]byte, MaxSealedBytes+1), want: "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.key.Open(tt.sealed)
			if err == nil {
				t.Fatalf("Open succeeded with %q", got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds the secret", err)
			}
		})
	}
	if _, err := other.Open(sealed); !errors.Is(err, ErrCannotOpen) {
		t.Errorf("wrong key: error %v, want ErrCannotOpen", err)
	}
}

func TestPublicKeyRoundTripAndID(t *testing.T) {
	k := mustKey(t)
	pub := k.PublicKey()
	for _, s := range []string{pub.String(), strings.TrimRight(pub.String(), "="), " " + pub.String() + "\n"} {
		got, err := ParsePublicKey(s)
		if err != nil {
			t.Fatalf("ParsePublicKey(%q): %v", s, err)
		}
		if got != pub {
			t.Fatalf("ParsePublicKey(%q) gave another key", s)
		}
	}
	id := KeyID(pub)
	if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("KeyID = %q, want 16 lower-case hex digits", id)
	}
	if k.KeyID() != id || KeyID(mustKey(t).PublicKey()) == id {
		t.Error("key ids do not tell keys apart")
	}
	if b, err := PublicKeyFromBytes(pub[:]); err != nil || b != pub {
		t.Errorf("PublicKeyFromBytes = %v, %v", b, err)
	}
	for _, bad := range []string{"", "not base64!", "AAAA", pub.String() + "AAAA"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	if _, err := PublicKeyFromBytes(make([]byte, 31)); err == nil {
		t.Error("PublicKeyFromBytes accepted 31 bytes")
	}
}

func TestPrivateKeyPrintsNoSecret(t *testing.T) {
	k := mustKey(t)
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("key", "key", k)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k), logged.String()} {
		if !strings.Contains(s, k.KeyID()) {
			t.Errorf("%q does not name the key id", s)
		}
		if strings.Contains(s, fmt.Sprint(k.priv[:4])) || strings.Contains(s, fmt.Sprintf("%x", k.priv[:4])) {
			t.Errorf("%q holds private key bytes", s)
		}
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want string // "" valid
	}{
		{id: "npm_token"},
		{id: "aws.credentials-2"},
		{id: "A"},
		{id: strings.Repeat("x", MaxIDLen)},
		{id: "", want: "empty"},
		{id: strings.Repeat("x", MaxIDLen+1), want: "at most 128"},
		{id: ".", want: "not allowed"},
		{id: "..", want: "not allowed"},
		{id: "a/b", want: "only letters"},
		{id: "a b", want: "only letters"},
		{id: "a=b", want: "only letters"},
		{id: "ünïcode", want: "only letters"},
		{id: "a\n", want: "only letters"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.20q", tt.id), func(t *testing.T) {
			err := ValidID(tt.id)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ValidID(%q) = %v", tt.id, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("ValidID(%q) = %v, want an error containing %q", tt.id, err, tt.want)
			}
		})
	}
}

func TestLoadOrCreatePrivateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "secrets.key")
	k, err := LoadOrCreatePrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	again, err := LoadOrCreatePrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.PublicKey() != k.PublicKey() || loaded.PublicKey() != k.PublicKey() {
		t.Fatal("loading the key file again gave another key")
	}
	sealed, _ := Seal(k.PublicKey(), []byte("v"))
	if v, err := loaded.Open(sealed); err != nil || string(v) != "v" {
		t.Fatalf("the loaded key does not open what was sealed to the created one: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want the key file alone", len(entries))
	}
}

func TestLoadOrCreatePrivateKeyRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.key")
	keys := make([]*PrivateKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrCreatePrivateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if k == nil || keys[0] == nil || k.PublicKey() != keys[0].PublicKey() {
			t.Fatal("racing creators ended up with different keys")
		}
	}
}

func TestLoadPrivateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	k := mustKey(t)
	good := filepath.Join(dir, "good.key")
	if err := k.writeFile(good); err != nil {
		t.Fatal(err)
	}
	content, _ := os.ReadFile(good)
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		want string
	}{
		{name: "readable by others", path: write("world.key", content, 0o644), want: "chmod 600"},
		{name: "readable by group", path: write("group.key", content, 0o640), want: "open to group or others"},
		{name: "not base64", path: write("junk.key", []byte("hunter2 is my password\n"), 0o600), want: "does not hold"},
		{name: "wrong length", path: write("short.key", []byte("AAAA\n"), 0o600), want: "does not hold"},
		{name: "directory", path: dir, want: "not a regular file"},
		{name: "missing", path: filepath.Join(dir, "missing.key"), want: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadPrivateKey(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadPrivateKey = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(string(content))) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q holds the file's content", err)
			}
		})
	}
	if _, err := LoadOrCreatePrivateKey(filepath.Join(dir, "world.key")); err == nil {
		t.Error("LoadOrCreatePrivateKey replaced or accepted a key file open to others")
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}

// FuzzOpen: garbage never opens, never panics, and the error never echoes
// the input.
func FuzzOpen(f *testing.F) {
	k, err := GenerateKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	valid, _ := Seal(k.PublicKey(), []byte("seed secret"))
	f.Add(valid)
	f.Add([]byte{})
	f.Add(make([]byte, Overhead))
	f.Add(append(bytes.Clone(valid[:Overhead]), 'x'))
	random := make([]byte, 100)
	_, _ = rand.Read(random)
	f.Add(random)
	f.Fuzz(func(t *testing.T, sealed []byte) {
		got, err := k.Open(sealed)
		if err != nil {
			if len(sealed) >= 16 && strings.Contains(err.Error(), string(sealed)) {
				t.Fatalf("error %q echoes the input", err)
			}
			return
		}
		if !bytes.Equal(sealed, valid) {
			t.Fatalf("garbage of %d bytes opened to %d bytes", len(sealed), len(got))
		}
	})
}
