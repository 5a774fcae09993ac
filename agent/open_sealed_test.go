package agent

import (
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// TestOpenSealed: the agent opens a build's sealed values only for the
// binding they were sealed with (the record's tenant, the spec's seal
// nonce, the value's id), and its errors name the value by id, never by
// its bytes.
func TestOpenSealed(t *testing.T) {
	key, err := seal.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := seal.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "agent-1", SecretsKey: key}}
	nonce, err := seal.NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	const value = "npm-token-value-0123456789"
	sealFor := func(k *seal.PrivateKey, tenant string, nonce []byte, id string) *kilnv1.SealedSecret {
		s, err := seal.Seal(k.PublicKey(), seal.Binding{Tenant: tenant, Nonce: nonce, ID: id}, []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		return &kilnv1.SealedSecret{Id: id, Sealed: s, KeyId: k.KeyID()}
	}
	build := func(tenant string, nonce []byte, secrets ...*kilnv1.SealedSecret) *kilnv1.Build {
		return &kilnv1.Build{Id: "b1", Tenant: tenant, Spec: &kilnv1.BuildSpec{SealNonce: nonce, Secrets: secrets}}
	}
	otherNonce, _ := seal.NewNonce()
	moved := sealFor(key, "team-a", nonce, "npm")
	moved.Id = "aws"

	opened, err := a.openSecrets(build("team-a", nonce, sealFor(key, "team-a", nonce, "npm")))
	if err != nil || string(opened["npm"]) != value {
		t.Fatalf("openSecrets = %v, %v; want the value", opened, err)
	}

	tests := []struct {
		name string
		a    *Agent
		b    *kilnv1.Build
		want string
	}{
		{name: "copied into another build", a: a, b: build("team-a", otherNonce, sealFor(key, "team-a", nonce, "npm")),
			want: `sealed secret "npm" was sealed for another build or tenant`},
		{name: "copied into another tenant's build", a: a, b: build("team-b", nonce, sealFor(key, "team-a", nonce, "npm")),
			want: `sealed secret "npm" was sealed for another build or tenant`},
		{name: "moved to another id", a: a, b: build("team-a", nonce, moved),
			want: `sealed secret "aws" was sealed for another build or tenant`},
		{name: "no nonce in the spec", a: a, b: build("team-a", nil, sealFor(key, "team-a", nonce, "npm")),
			want: `secret "npm": seal_nonce is 0 bytes`},
		{name: "sealed to another key", a: a, b: build("team-a", nonce, sealFor(other, "team-a", nonce, "npm")),
			want: `secret "npm" is sealed to key ` + other.KeyID()},
		{name: "agent without a key", a: &Agent{cfg: Config{Name: "agent-2"}}, b: build("team-a", nonce, sealFor(key, "team-a", nonce, "npm")),
			want: `agent "agent-2" has no secrets key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.openSecrets(tt.b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("openSecrets = %v, %v; want an error containing %q", got, err, tt.want)
			}
			if got != nil || strings.Contains(err.Error(), value) {
				t.Fatalf("openSecrets gave or named the value: %v, %v", got, err)
			}
		})
	}

	// Registry credentials are bound the same way.
	reg := func(tenant string) *kilnv1.Build {
		s, err := seal.Seal(key.PublicKey(), seal.Binding{Tenant: tenant, Nonce: nonce, ID: "ghcr.io"}, []byte(`{"username":"u","password":"`+value+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		return &kilnv1.Build{Tenant: "team-a", Spec: &kilnv1.BuildSpec{SealNonce: nonce, RegistryAuth: []*kilnv1.SealedSecret{{Id: "ghcr.io", Sealed: s, KeyId: key.KeyID()}}}}
	}
	if creds, err := a.openRegistryAuth(reg("team-a")); err != nil || creds["ghcr.io"].Password != value {
		t.Fatalf("openRegistryAuth = %v; want the credential", err)
	}
	if _, err := a.openRegistryAuth(reg("team-b")); err == nil || err.Error() != `sealed registry credential "ghcr.io" was sealed for another build or tenant` {
		t.Fatalf("openRegistryAuth of another tenant's credential = %v", err)
	}
}
