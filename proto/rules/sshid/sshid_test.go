package sshid

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/kilnbuild/kiln/proto/rules"
)

// keyFiles makes key files as ssh-keygen and openssl write them: OpenSSH
// ed25519, PKCS#1 RSA, SEC 1 ECDSA, PKCS#8 ed25519.
func keyFiles(t *testing.T) map[string][]byte {
	t.Helper()
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	openssh, err := ssh.MarshalPrivateKey(edKey, "ci deploy key")
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"openssh ed25519": pem.EncodeToMemory(openssh),
		"pkcs1 rsa":       pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
		"sec1 ecdsa":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}),
		"pkcs8 ed25519":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}
}

func TestValid(t *testing.T) {
	for _, id := range []string{"default", "github", "gitlab_deploy-key.2", strings.Repeat("a", MaxIDLen)} {
		if err := Valid(id); err != nil {
			t.Errorf("Valid(%q) = %v", id, err)
		}
	}
	for id, want := range map[string]string{
		"":                              "ssh id is empty",
		"user@host":                     `ssh id "user@host" may hold only`,
		"a=b":                           `ssh id "a=b" may hold only`,
		"a,b":                           `ssh id "a,b" may hold only`,
		"a b":                           `ssh id "a b" may hold only`,
		strings.Repeat("a", MaxIDLen+1): "129 bytes, at most 128",
	} {
		err := Valid(id)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Valid(%q) = %v, want an invalid error containing %q", id, err, want)
		}
	}
}

func TestCheckSet(t *testing.T) {
	if err := CheckSet(map[string]int{"default": 400, "github": MaxValueBytes - 400}); err != nil {
		t.Fatalf("CheckSet of two ids inside the limits: %v", err)
	}
	many := map[string]int{}
	for i := range MaxIDs + 1 {
		many[strings.Repeat("k", i+1)] = 1
	}
	for name, tt := range map[string]struct {
		sizes map[string]int
		want  string
	}{
		"too many ids": {many, "17 ssh ids given, at most 16 allowed"},
		"bad id":       {map[string]int{"a b": 1}, `ssh id "a b"`},
		"one too big":  {map[string]int{"default": MaxValueBytes + 1}, `the keys of ssh id "default" are 65537 bytes`},
		"total":        {map[string]int{"a": MaxValueBytes, "b": 1}, "the build's ssh keys are 65537 bytes together"},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckSet(tt.sizes)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, rules.ErrInvalid) {
				t.Fatalf("CheckSet = %v, want an invalid error containing %q", err, tt.want)
			}
		})
	}
}

// TestKeysRoundTrip: Keys concatenates the key files' keys, and Parse reads
// the same keys back, in order.
func TestKeysRoundTrip(t *testing.T) {
	files := keyFiles(t)
	names := []string{"openssh ed25519", "pkcs1 rsa", "sec1 ecdsa", "pkcs8 ed25519"}
	var in [][]byte
	for _, n := range names {
		// Text around the block (a comment line, no final newline) is dropped.
		in = append(in, append([]byte("# "+n+"\n"), bytes.TrimSpace(files[n])...))
	}
	value, err := Keys(in)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(value, []byte("# ")) {
		t.Error("the value keeps the text around the keys")
	}
	keys, err := Parse(value)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(names) {
		t.Fatalf("Parse gave %d keys, want %d", len(keys), len(names))
	}
	for i, n := range names {
		want, err := ssh.ParseRawPrivateKey(files[n])
		if err != nil {
			t.Fatal(err)
		}
		gotSigner, err := ssh.NewSignerFromKey(keys[i])
		if err != nil {
			t.Fatal(err)
		}
		wantSigner, _ := ssh.NewSignerFromKey(want)
		if !bytes.Equal(gotSigner.PublicKey().Marshal(), wantSigner.PublicKey().Marshal()) {
			t.Errorf("key %d (%s) came back as another key", i+1, n)
		}
	}
}

func TestKeyRefuses(t *testing.T) {
	files := keyFiles(t)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	encrypted, err := ssh.MarshalPrivateKeyWithPassphrase(edKey, "", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(edKey)
	pub := ssh.MarshalAuthorizedKey(signer.PublicKey())
	big := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: make([]byte, MaxKeyBytes)})
	garbled := bytes.Replace(files["pkcs1 rsa"], []byte("\n"), []byte("\nAAAA"), 3)

	for name, tt := range map[string]struct {
		data []byte
		is   error
		want string
	}{
		"encrypted":         {pem.EncodeToMemory(encrypted), ErrEncrypted, "encrypted with a passphrase"},
		"public key":        {pub, ErrNoKey, "no private key"},
		"empty":             {nil, ErrNoKey, "no private key"},
		"certificate":       {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), rules.ErrInvalid, "not a private key ssh can use"},
		"too big":           {big, rules.ErrInvalid, "over the limit of 16384 bytes"},
		"garbled base64":    {garbled, rules.ErrInvalid, "not a private key ssh can use"},
		"garbled structure": {pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte("openssh-key-v1\x00garbage")}), rules.ErrInvalid, "not a private key ssh can use"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Key(tt.data)
			if err == nil || !errors.Is(err, tt.is) || !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Key = %v, want an error matching %v containing %q", err, tt.is, tt.want)
			}
		})
	}
}

func TestKeysRefuses(t *testing.T) {
	files := keyFiles(t)
	good := files["openssh ed25519"]
	if _, err := Keys(nil); err == nil {
		t.Error("Keys accepted no key")
	}
	many := make([][]byte, MaxKeysPerID+1)
	for i := range many {
		many[i] = good
	}
	if _, err := Keys(many); err == nil || !strings.Contains(err.Error(), "17 keys given, at most 16") {
		t.Errorf("Keys of 17 files = %v", err)
	}
	_, err := Keys([][]byte{good, []byte("ssh-ed25519 AAAA... me@laptop\n")})
	if KeyIndex(err) != 1 || !errors.Is(err, ErrNoKey) {
		t.Errorf("Keys with a public key second = %v (index %d), want ErrNoKey at index 1", err, KeyIndex(err))
	}
	if KeyIndex(errors.New("other")) != -1 {
		t.Error("KeyIndex of another error is not -1")
	}
}

func TestParseRefuses(t *testing.T) {
	files := keyFiles(t)
	good := files["openssh ed25519"]
	many := bytes.Repeat(good, MaxKeysPerID+1)
	for name, tt := range map[string]struct {
		value []byte
		want  string
	}{
		"empty":            {nil, "no private key"},
		"too many":         {many[:min(len(many), MaxValueBytes)], "more than 16 keys"},
		"too big":          {make([]byte, MaxValueBytes+1), "over the limit"},
		"trailing text":    {append(bytes.Clone(good), "not a key"...), "after the last key"},
		"second not a key": {append(bytes.Clone(good), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})...), "key 2: not a private key"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tt.value)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, rules.ErrInvalid) {
				t.Fatalf("Parse = %v, want an invalid error containing %q", err, tt.want)
			}
		})
	}
}

// TestErrorsHoldNoKey: whatever is wrong with a key, the error never
// quotes its bytes.
func TestErrorsHoldNoKey(t *testing.T) {
	files := keyFiles(t)
	for name, f := range files {
		lines := strings.Split(string(f), "\n")
		body := lines[1] // the first base64 line of the key
		broken := []byte(strings.Replace(string(f), lines[2], strings.Repeat("A", len(lines[2])), 1))
		for _, data := range [][]byte{broken, f[:len(f)/2], append(bytes.Clone(f), "trailing"...)} {
			_, err1 := Key(data)
			_, err2 := Parse(data)
			for _, err := range []error{err1, err2} {
				if err != nil && strings.Contains(err.Error(), body[:16]) {
					t.Errorf("%s: error %q quotes the key", name, err)
				}
			}
		}
	}
}
