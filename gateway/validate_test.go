package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
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

// FuzzCleanContextPath: whatever a client sends, an accepted path stays
// inside the context.
func FuzzCleanContextPath(f *testing.F) {
	for _, s := range []string{"Dockerfile", "../x", "/abs", "a/../../b", "./a/./b", "..", "a\x00b", `\x`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c, err := cleanContextPath(p)
		if err != nil {
			return
		}
		if c == "" || c == "." || c == ".." || strings.HasPrefix(c, "../") || strings.HasPrefix(c, "/") || strings.ContainsRune(c, 0) {
			t.Fatalf("cleanContextPath(%q) = %q escapes the context", p, c)
		}
	})
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
