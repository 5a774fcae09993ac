package sealed

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules/seal"
)

func mustKey(t testing.TB) *PrivateKey {
	t.Helper()
	k, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
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
	b := seal.Binding{Tenant: "t", Nonce: bytes.Repeat([]byte{1}, seal.MinNonceBytes), ID: "v"}
	sealed, _ := seal.Seal(k.PublicKey(), b, []byte("v"))
	if v, err := loaded.Open(b, sealed); err != nil || string(v) != "v" {
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
	if err := writeKeyFile(k, good); err != nil {
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
