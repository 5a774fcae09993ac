package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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

func mustNonce(t testing.TB) []byte {
	t.Helper()
	n, err := NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSealOpen(t *testing.T) {
	k := mustKey(t)
	b := Binding{Tenant: "team-a", Nonce: mustNonce(t), ID: "npm"}
	tests := []struct {
		name  string
		value []byte
	}{
		{name: "empty", value: []byte{}},
		{name: "token", value: []byte("ghp_0123456789abcdef")},
		{name: "binary", value: []byte{0, 1, 2, 0xff, '\n'}},
		{name: "largest allowed", value: bytes.Repeat([]byte("s"), MaxValueBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := Seal(k.PublicKey(), b, tt.value)
			if err != nil {
				t.Fatal(err)
			}
			if len(sealed) != len(tt.value)+Overhead {
				t.Errorf("sealed %d bytes into %d, want %d", len(tt.value), len(sealed), len(tt.value)+Overhead)
			}
			if len(tt.value) >= 8 && bytes.Contains(sealed, tt.value[:8]) {
				t.Error("the sealed value holds the plaintext")
			}
			got, err := k.Open(b, sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.value) {
				t.Errorf("opened %d bytes, want the %d sealed", len(got), len(tt.value))
			}
		})
	}
}

// TestOpenRefusesAnotherBinding: a value copied into another build, another
// tenant's build or under another id opens to nothing.
func TestOpenRefusesAnotherBinding(t *testing.T) {
	k := mustKey(t)
	const secret = "correct horse battery staple"
	sealedFor := Binding{Tenant: "team-a", Nonce: mustNonce(t), ID: "npm"}
	sealed, err := Seal(k.PublicKey(), sealedFor, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	longerNonce := append(bytes.Clone(sealedFor.Nonce), 0)
	tests := []struct {
		name string
		b    Binding
	}{
		{name: "another build", b: Binding{Tenant: "team-a", Nonce: mustNonce(t), ID: "npm"}},
		{name: "another tenant", b: Binding{Tenant: "team-b", Nonce: sealedFor.Nonce, ID: "npm"}},
		{name: "empty tenant", b: Binding{Tenant: "", Nonce: sealedFor.Nonce, ID: "npm"}},
		{name: "another id", b: Binding{Tenant: "team-a", Nonce: sealedFor.Nonce, ID: "aws"}},
		{name: "nonce with a byte more", b: Binding{Tenant: "team-a", Nonce: longerNonce, ID: "npm"}},
		// Length prefixes keep parts from sliding into each other.
		{name: "tenant and id shifted", b: Binding{Tenant: "team-an", Nonce: sealedFor.Nonce, ID: "pm"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.Open(tt.b, sealed)
			if !errors.Is(err, ErrWrongBinding) {
				t.Fatalf("Open = %q, %v; want ErrWrongBinding", got, err)
			}
			if got != nil || strings.Contains(err.Error(), secret) {
				t.Fatalf("Open returned or named the value: %q, %v", got, err)
			}
			if err.Error() != "sealed for another build or tenant" {
				t.Errorf("error %q", err)
			}
		})
	}
}

func TestSealIsRandomized(t *testing.T) {
	k := mustKey(t)
	b := Binding{Tenant: "t", Nonce: mustNonce(t), ID: "x"}
	a, _ := Seal(k.PublicKey(), b, []byte("same value"))
	c, _ := Seal(k.PublicKey(), b, []byte("same value"))
	if bytes.Equal(a, c) {
		t.Fatal("sealing the same value twice gave the same bytes")
	}
}

func TestSealRefuses(t *testing.T) {
	k := mustKey(t)
	nonce := mustNonce(t)
	tests := []struct {
		name  string
		b     Binding
		value []byte
		want  string
	}{
		{name: "too large", b: Binding{Nonce: nonce, ID: "big"}, value: bytes.Repeat([]byte("P"), MaxValueBytes+1), want: `sealed value "big" is 512001 bytes, over the limit`},
		{name: "no nonce", b: Binding{ID: "npm"}, value: []byte("PPPPPPPP"), want: "seal_nonce is 0 bytes"},
		{name: "short nonce", b: Binding{Nonce: nonce[:MinNonceBytes-1], ID: "npm"}, value: []byte("PPPPPPPP"), want: "seal_nonce is 15 bytes"},
		{name: "long nonce", b: Binding{Nonce: make([]byte, MaxNonceBytes+1), ID: "npm"}, value: []byte("PPPPPPPP"), want: "seal_nonce is 65 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Seal(k.PublicKey(), tt.b, tt.value)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "PPPP") {
				t.Fatalf("Seal = %v, want an error containing %q without the value", err, tt.want)
			}
		})
	}
}

func TestOpenFailures(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	const secret = "correct horse battery staple"
	b := Binding{Tenant: "t", Nonce: mustNonce(t), ID: "s"}
	sealed, err := Seal(k.PublicKey(), b, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	tests := []struct {
		name   string
		key    *PrivateKey
		b      Binding
		sealed []byte
		want   string
	}{
		{name: "wrong key", key: other, b: b, sealed: sealed, want: "does not open"},
		{name: "altered byte", key: k, b: b, sealed: flipped, want: "does not open"},
		{name: "truncated", key: k, b: b, sealed: sealed[:len(sealed)-1], want: "does not open"},
		{name: "shorter than the overhead", key: k, b: b, sealed: sealed[:Overhead-1], want: "shorter than"},
		{name: "nil", key: k, b: b, sealed: nil, want: "shorter than"},
		{name: "too large", key: k, b: b, sealed: make([]byte, MaxSealedBytes+1), want: "over the limit"},
		{name: "no nonce", key: k, b: Binding{Tenant: "t", ID: "s"}, sealed: sealed, want: "seal_nonce is 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.key.Open(tt.b, tt.sealed)
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
	if _, err := other.Open(b, sealed); !errors.Is(err, ErrCannotOpen) {
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
	again, err := PrivateKeyFromBytes(k.Bytes())
	if err != nil || again.PublicKey() != pub {
		t.Fatalf("PrivateKeyFromBytes(Bytes()) = %v, %v; want the same key", again, err)
	}
	if _, err := PrivateKeyFromBytes(make([]byte, 31)); err == nil {
		t.Error("PrivateKeyFromBytes accepted 31 bytes")
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

// FuzzOpen: garbage never opens, never panics, and the error never echoes
// the input.
func FuzzOpen(f *testing.F) {
	k, err := GenerateKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	b := Binding{Tenant: "t", Nonce: bytes.Repeat([]byte{7}, MinNonceBytes), ID: "seed"}
	valid, _ := Seal(k.PublicKey(), b, []byte("seed secret"))
	f.Add(valid, "t", "seed")
	f.Add([]byte{}, "t", "seed")
	f.Add(make([]byte, Overhead), "", "")
	f.Add(append(bytes.Clone(valid[:Overhead]), 'x'), "t", "seed")
	f.Add(valid, "u", "seed")
	random := make([]byte, 100)
	_, _ = rand.Read(random)
	f.Add(random, "t", "x")
	f.Fuzz(func(t *testing.T, sealed []byte, tenant, id string) {
		got, err := k.Open(Binding{Tenant: tenant, Nonce: b.Nonce, ID: id}, sealed)
		if err != nil {
			if len(sealed) >= 16 && strings.Contains(err.Error(), string(sealed)) {
				t.Fatalf("error %q echoes the input", err)
			}
			return
		}
		if !bytes.Equal(sealed, valid) || tenant != b.Tenant || id != b.ID {
			t.Fatalf("garbage of %d bytes opened to %d bytes for tenant %q, id %q", len(sealed), len(got), tenant, id)
		}
	})
}
