package gateway

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/registryhost"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/secretid"
)

func TestValidateSpec(t *testing.T) {
	tests := []struct {
		name    string
		spec    *kilnv1.BuildSpec
		message string // empty: valid
	}{
		{name: "empty spec is valid", spec: &kilnv1.BuildSpec{}},
		{name: "missing spec", spec: nil, message: "spec is missing"},
		{name: "registry with port", spec: &kilnv1.BuildSpec{Tags: []string{"127.0.0.1:5000/team/app:v1.2"}}},
		{name: "upper-case repository", spec: &kilnv1.BuildSpec{Tags: []string{"UPPER/Case:bad tag"}}, message: `invalid tag "UPPER/Case:bad tag"`},
		{name: "space in tag", spec: &kilnv1.BuildSpec{Tags: []string{"app:bad tag"}}, message: `invalid tag "app:bad tag"`},
		{name: "digest tag", spec: &kilnv1.BuildSpec{Tags: []string{"app@sha256:" + strings.Repeat("a", 64)}}, message: "digest"},
		{name: "push without tag", spec: &kilnv1.BuildSpec{Push: true}, message: "no tag"},
		{name: "absolute dockerfile", spec: &kilnv1.BuildSpec{Dockerfile: "/etc/passwd"}, message: "absolute"},
		{name: "escaping dockerfile", spec: &kilnv1.BuildSpec{Dockerfile: "a/../../x"}, message: "escapes the build context"},
		{name: "nested dockerfile", spec: &kilnv1.BuildSpec{Dockerfile: "./docker/Dockerfile.prod"}},
		{name: "bad build arg", spec: &kilnv1.BuildSpec{BuildArgs: map[string]string{"A=B": "x"}}, message: `build arg name "A=B"`},
		{name: "target with slash", spec: &kilnv1.BuildSpec{Target: "a/b"}, message: "not a stage name"},
		{name: "classic builder", spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC}},
		{name: "BuildKit builder", spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_BUILDKIT}},
		{name: "unknown builder", spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder(7)}, message: "builder 7 is not known"},
		{name: "secrets", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("npm", 10), sealedOf("aws.creds", 0)}}},
		{name: "secret with a bad id", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("a/b", 1)}}, message: `secret id "a/b"`},
		{name: "secret with no id", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("", 1)}}, message: "secret id is empty"},
		{name: "secret given twice", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("npm", 1), sealedOf("npm", 2)}}, message: `secret id "npm" is given twice`},
		{name: "nil secret", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{nil}}, message: "empty"},
		{name: "secret not sealed", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{{Id: "npm", Sealed: []byte("plain"), KeyId: "k"}}}, message: `secret "npm": sealed value is 5 bytes, shorter`},
		{name: "secret too large", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("big", secretid.MaxValueBytes+1)}}, message: `secret "big" is 512001 bytes, over the limit of 512000 bytes`},
		{name: "largest secret", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("big", secretid.MaxValueBytes)}}},
		{name: "secrets too large together", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("a", 300<<10), sealedOf("b", 300<<10)}}, message: "614400 bytes together, over the limit of 524288"},
		{name: "too many secrets", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: manySecrets(secretid.MaxSecrets + 1)}, message: "101 build secrets given, at most 100"},
		{name: "most secrets", spec: &kilnv1.BuildSpec{SealNonce: testNonce, Secrets: manySecrets(secretid.MaxSecrets)}},
		{name: "registry credential", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("127.0.0.1:5000", 40), sealedOf("docker.io", 40), sealedOf("[::1]:5000", 40)}}},
		{name: "registry credential with the classic builder", spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC, SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("ghcr.io", 40)}}},
		{name: "registry credential for a URL", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("https://ghcr.io", 40)}}, message: `registry "https://ghcr.io" is not a registry host`},
		{name: "registry credential upper case", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("GHCR.io", 40)}}, message: "lower case"},
		{name: "registry credential given twice", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("ghcr.io", 1), sealedOf("ghcr.io", 2)}}, message: `registry "ghcr.io" is given twice`},
		{name: "registry credential too large", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{sealedOf("ghcr.io", 16<<10+1)}}, message: `registry credential "ghcr.io" is 16385 bytes, over the limit of 16384 bytes`},
		{name: "registry credential not sealed", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: []*kilnv1.SealedSecret{{Id: "ghcr.io", Sealed: []byte("user:pass"), KeyId: "k"}}}, message: `registry credential "ghcr.io": sealed value is 9 bytes, shorter`},
		{name: "too many registry credentials", spec: &kilnv1.BuildSpec{SealNonce: testNonce, RegistryAuth: manyRegistries(registryhost.MaxCredentials + 1)}, message: "33 registry credentials given, at most 32"},
		{name: "sealed values without a nonce", spec: &kilnv1.BuildSpec{Secrets: []*kilnv1.SealedSecret{sealedOf("npm", 1)}}, message: "seal_nonce is 0 bytes: a build with sealed secrets or registry credentials needs a fresh random seal_nonce of 16 to 64 bytes"},
		{name: "registry credentials without a nonce", spec: &kilnv1.BuildSpec{RegistryAuth: []*kilnv1.SealedSecret{sealedOf("ghcr.io", 40)}}, message: "seal_nonce is 0 bytes"},
		{name: "short nonce", spec: &kilnv1.BuildSpec{SealNonce: testNonce[:15], Secrets: []*kilnv1.SealedSecret{sealedOf("npm", 1)}}, message: "seal_nonce is 15 bytes"},
		{name: "timeout", spec: &kilnv1.BuildSpec{Timeout: durationpb.New(10 * time.Minute)}},
		{name: "longest timeout", spec: &kilnv1.BuildSpec{Timeout: durationpb.New(24 * time.Hour)}},
		{name: "zero timeout", spec: &kilnv1.BuildSpec{Timeout: durationpb.New(0)}, message: "build timeout 0s is not positive"},
		{name: "negative timeout", spec: &kilnv1.BuildSpec{Timeout: durationpb.New(-time.Minute)}, message: "build timeout -1m0s is not positive"},
		{name: "timeout over the limit", spec: &kilnv1.BuildSpec{Timeout: durationpb.New(25 * time.Hour)}, message: "build timeout 25h0m0s is longer than the farm's limit of 24h0m0s"},
		{name: "malformed timeout", spec: &kilnv1.BuildSpec{Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}}, message: "timeout is not a valid duration"},
		{name: "nonce without sealed values", spec: &kilnv1.BuildSpec{SealNonce: []byte("x")}},
		{name: "secrets with the classic builder", spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC, SealNonce: testNonce, Secrets: []*kilnv1.SealedSecret{sealedOf("npm", 1)}}, message: "need the BuildKit builder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validateSpec(tc.spec)
			if tc.message == "" {
				if err != nil {
					t.Fatalf("valid spec refused: %v", err)
				}
				return
			}
			st, _ := status.FromError(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.message) {
				t.Fatalf("validateSpec = %v, want InvalidArgument containing %q", err, tc.message)
			}
		})
	}
}

// testNonce is a seal nonce of the shortest length allowed.
var testNonce = []byte("0123456789abcdef")

// sealedOf returns a secret whose sealed value has the size sealing a value
// of n bytes gives (validation does not open it).
func sealedOf(id string, n int) *kilnv1.SealedSecret {
	return &kilnv1.SealedSecret{Id: id, Sealed: make([]byte, n+seal.Overhead), KeyId: "0123456789abcdef"}
}

func manySecrets(n int) []*kilnv1.SealedSecret {
	out := make([]*kilnv1.SealedSecret, n)
	for i := range out {
		out[i] = sealedOf(fmt.Sprintf("s%d", i), 1)
	}
	return out
}

func TestValidateSpecDefaultsDockerfile(t *testing.T) {
	s := &kilnv1.BuildSpec{}
	if err := validateSpec(s); err != nil {
		t.Fatal(err)
	}
	if s.Dockerfile != "Dockerfile" {
		t.Fatalf("dockerfile defaulted to %q", s.Dockerfile)
	}
	s = &kilnv1.BuildSpec{Dockerfile: "./a//b/../Dockerfile"}
	if err := validateSpec(s); err != nil {
		t.Fatal(err)
	}
	if s.Dockerfile != "a/Dockerfile" {
		t.Fatalf("dockerfile cleaned to %q, want a/Dockerfile", s.Dockerfile)
	}
}

// FuzzValidateTag: the validator never panics, and what it accepts has no
// whitespace and no upper-case repository.
func FuzzValidateTag(f *testing.F) {
	for _, s := range []string{"app", "127.0.0.1:5000/a/b:c", "UPPER/Case:bad tag", "a:b:c", "a@sha256:00", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		if ValidateTag(tag) != nil {
			return
		}
		if !utf8.ValidString(tag) || strings.ContainsAny(tag, " \t\n") {
			t.Fatalf("ValidateTag accepted %q", tag)
		}
	})
}

func manyRegistries(n int) []*kilnv1.SealedSecret {
	out := make([]*kilnv1.SealedSecret, n)
	for i := range out {
		out[i] = sealedOf(fmt.Sprintf("registry-%d.example", i), 1)
	}
	return out
}
