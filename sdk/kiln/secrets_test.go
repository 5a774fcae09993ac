package kiln

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBuildSealsSecrets(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithSecretsKey())
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	secrets := map[string][]byte{"npm": []byte("npm-token-value-0123"), "aws": []byte("aws-credentials-4567"), "empty": {}}

	b, err := runBuild(t.Context(), client, BuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"app:1"}}, Context: pack(t, dir, ""), Secrets: secrets})
	if err != nil {
		t.Fatal(err)
	}
	got := b.GetSpec().GetSecrets()
	if len(got) != 3 || got[0].GetId() != "aws" || got[1].GetId() != "empty" || got[2].GetId() != "npm" {
		t.Fatalf("sealed secrets %v, want aws, empty, npm in id order", got)
	}
	for _, s := range got {
		if s.GetKeyId() != farm.SecretsKeyID() {
			t.Errorf("secret %q sealed to key %q, want %q", s.GetId(), s.GetKeyId(), farm.SecretsKeyID())
		}
		if v := secrets[s.GetId()]; len(v) > 0 && bytes.Contains(s.GetSealed(), v) {
			t.Errorf("secret %q travels in the clear", s.GetId())
		}
		v, err := farm.OpenSecret(b, s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v, secrets[s.GetId()]) {
			t.Errorf("secret %q opened to another value", s.GetId())
		}
	}

	// Sealing is randomized: the same secrets give other bytes next time.
	again, err := runBuild(t.Context(), client, BuildRequest{Context: pack(t, dir, ""), Secrets: map[string][]byte{"npm": secrets["npm"]}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again.GetSpec().GetSecrets()[0].GetSealed(), got[2].GetSealed()) {
		t.Error("sealing the same secret twice gave the same bytes")
	}

	// Each build has its own seal nonce, and its values open for it alone.
	n1, n2 := b.GetSpec().GetSealNonce(), again.GetSpec().GetSealNonce()
	if len(n1) < seal.MinNonceBytes || len(n2) < seal.MinNonceBytes || bytes.Equal(n1, n2) {
		t.Fatalf("seal nonces %x and %x: want two different nonces of at least %d bytes", n1, n2, seal.MinNonceBytes)
	}
	if v, err := farm.OpenSecret(again, got[2]); !errors.Is(err, seal.ErrWrongBinding) || v != nil {
		t.Errorf("the first build's secret opened in the second build: %v", err)
	}
}

func TestBuildSecretsRefused(t *testing.T) {
	withKey := farmtest.Start(t, farmtest.WithSecretsKey())
	noKey := farmtest.Start(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	const value = "the-secret-value"
	many := map[string][]byte{}
	for i := range MaxSecrets + 1 {
		many[strings.Repeat("s", i+1)] = []byte("v")
	}
	tests := []struct {
		name    string
		farm    *farmtest.Farm
		spec    *kilnv1.BuildSpec
		secrets map[string][]byte
		code    codes.Code
		message string
	}{
		{name: "bad id", farm: withKey, secrets: map[string][]byte{"a/b": []byte(value)}, code: codes.InvalidArgument, message: `secret id "a/b"`},
		{name: "too large", farm: withKey, secrets: map[string][]byte{"big": bytes.Repeat([]byte("v"), MaxSecretBytes+1)}, code: codes.InvalidArgument, message: `secret "big" is 512001 bytes, over the limit of 512000 bytes`},
		{name: "too large together", farm: withKey, secrets: map[string][]byte{"a": make([]byte, 300<<10), "b": make([]byte, 300<<10)}, code: codes.InvalidArgument, message: "over the limit of 524288 bytes"},
		{name: "too many", farm: withKey, secrets: many, code: codes.InvalidArgument, message: "101 build secrets given"},
		{name: "classic builder", farm: withKey, spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC}, secrets: map[string][]byte{"npm": []byte(value)}, code: codes.InvalidArgument, message: "need the BuildKit builder"},
		{name: "id also sealed in the spec", farm: withKey, spec: &kilnv1.BuildSpec{Secrets: []*kilnv1.SealedSecret{{Id: "npm"}}}, secrets: map[string][]byte{"npm": []byte(value)}, code: codes.InvalidArgument, message: `secret id "npm" is given twice`},
		{name: "farm without a secrets key", farm: noKey, secrets: map[string][]byte{"npm": []byte(value)}, code: codes.FailedPrecondition, message: "fetching the farm's secrets key: rpc error: code = FailedPrecondition desc = this farm has no secrets key configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := dial(t, tt.farm.Addr)
			before := len(tt.farm.Builds())
			_, err := runBuild(t.Context(), client, BuildRequest{Spec: tt.spec, Context: pack(t, dir, ""), Secrets: tt.secrets})
			if status.Code(err) != tt.code || err == nil || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("Build = %v, want %s containing %q", err, tt.code, tt.message)
			}
			if strings.Contains(err.Error(), value) {
				t.Errorf("the error holds the secret's value: %v", err)
			}
			if n := len(tt.farm.Builds()); n != before {
				t.Errorf("a build was started")
			}
		})
	}
}
