package cli

import (
	"testing"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestRedactSealed(t *testing.T) {
	b := &kilnv1.Build{Id: "b", Spec: &kilnv1.BuildSpec{
		Tags:         []string{"reg/app:1"},
		Secrets:      []*kilnv1.SealedSecret{{Id: "npmrc", KeyId: "k1", Sealed: []byte("s1")}, {Id: "aws", KeyId: "k1", Sealed: []byte("s2")}},
		RegistryAuth: []*kilnv1.SealedSecret{{Id: "ghcr.io", KeyId: "k2", Sealed: []byte("s3")}},
		SealNonce:    []byte("nonce"),
	}}
	orig := proto.Clone(b)
	got := redactSealed(b)
	if !proto.Equal(b, orig) {
		t.Fatal("redactSealed changed the record it was given")
	}
	for _, s := range append(got.GetSpec().GetSecrets(), got.GetSpec().GetRegistryAuth()...) {
		if len(s.GetSealed()) != 0 {
			t.Fatalf("secret %s keeps its sealed bytes", s.GetId())
		}
		if s.GetId() == "" || s.GetKeyId() == "" {
			t.Fatalf("secret %v lost its id or key id", s)
		}
	}
	if len(got.GetSpec().GetSecrets()) != 2 || len(got.GetSpec().GetRegistryAuth()) != 1 || got.GetSpec().GetTags()[0] != "reg/app:1" {
		t.Fatalf("redactSealed dropped more than the sealed bytes: %v", got)
	}
}
