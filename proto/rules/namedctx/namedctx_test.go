package namedctx

import (
	"errors"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

func TestParseFlag(t *testing.T) {
	for _, tc := range []struct {
		flag, name, value string
		kind              Kind
		err               string
	}{
		{flag: "base=./dir", name: "base", value: "./dir", kind: KindLocal},
		{flag: "alpine=docker-image://busybox:1.36", name: "alpine", value: "docker-image://busybox:1.36", kind: KindImage},
		{flag: "docker.io/library/alpine:latest=docker-image://127.0.0.1:5000/x@sha256:" + strings.Repeat("a", 64), name: "alpine", value: "docker-image://127.0.0.1:5000/x@sha256:" + strings.Repeat("a", 64), kind: KindImage},
		{flag: "alpine:3.19=../x", name: "alpine:3.19", value: "../x", kind: KindLocal},
		{flag: "src=https://example.com/r.git#main:sub", name: "src", value: "https://example.com/r.git#main:sub", kind: KindGit},
		{flag: "a=b=c", name: "a", value: "b=c", kind: KindLocal},
		{flag: "base", err: "want NAME=VALUE"},
		{flag: "=dir", err: "want NAME=VALUE"},
		{flag: "base=", err: "want NAME=VALUE"},
		{flag: "Base=dir", err: "lowercase"},
		{flag: "context=dir", err: "is not supported"},
		{flag: "dockerfile=dir", err: "is not supported"},
		{flag: "a::linux/amd64=dir", err: "per-platform"},
		{flag: "a=target:build", err: "bake"},
		{flag: "a=oci-layout://./l", err: "oci-layout"},
		{flag: "a=https://example.com/x.tar.gz", err: "only docker-image://"},
		{flag: "a=docker-image://UPPER", err: "lowercase"},
		{flag: "a=docker-image://", err: "empty"},
		{flag: "a=https://tok@github.com/o/r.git", err: "credentials"},
		{flag: "a=git@github.com:o/r.git", err: "ssh"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			name, value, kind, err := ParseFlag(tc.flag)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, rules.ErrInvalid) {
					t.Fatalf("ParseFlag(%q) = %v, want an invalid error with %q", tc.flag, err, tc.err)
				}
				return
			}
			if err != nil || name != tc.name || value != tc.value || kind != tc.kind {
				t.Fatalf("ParseFlag(%q) = %q, %q, %v, %v; want %q, %q, %v", tc.flag, name, value, kind, err, tc.name, tc.value, tc.kind)
			}
		})
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"base":                             "base",
		"alpine:latest":                    "alpine",
		"docker.io/library/alpine":         "alpine",
		"index.docker.io/library/alpine:3": "alpine:3",
		"docker.io/me/app":                 "me/app",
		"127.0.0.1:5000/kiln/base:1":       "127.0.0.1:5000/kiln/base:1",
		"localhost/x":                      "localhost/x",
		"build-stage_1":                    "build-stage_1",
	} {
		got, err := NormalizeName(in)
		if err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-x", "a/", "a//b", "UP", "a b", "a:", "a@sha256:12", strings.Repeat("a", 300)} {
		if _, err := NormalizeName(bad); err == nil {
			t.Errorf("NormalizeName(%q) = nil error", bad)
		}
	}
}

func TestCheck(t *testing.T) {
	ref := &kilnv1.ContextRef{Digest: &kilnv1.Digest{Hash: "sha256:" + strings.Repeat("b", 64)}, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
	ok := []*kilnv1.NamedContext{
		{Name: "base", Context: ref},
		{Name: "alpine", Source: "docker-image://alpine:3"},
		{Name: "src", Source: "https://example.com/r.git"},
	}
	if err := Check(ok); err != nil {
		t.Fatalf("Check(valid) = %v", err)
	}
	many := make([]*kilnv1.NamedContext, MaxContexts+1)
	for i := range many {
		many[i] = &kilnv1.NamedContext{Name: "c" + strings.Repeat("x", i), Source: "docker-image://a"}
	}
	for name, tc := range map[string]struct {
		ncs  []*kilnv1.NamedContext
		want error
		msg  string
	}{
		"too many":      {many, rules.ErrOverLimit, "at most"},
		"twice":         {[]*kilnv1.NamedContext{{Name: "a", Source: "docker-image://a"}, {Name: "a", Context: ref}}, rules.ErrInvalid, "twice"},
		"not normal":    {[]*kilnv1.NamedContext{{Name: "alpine:latest", Source: "docker-image://a"}}, rules.ErrInvalid, `send "alpine"`},
		"both":          {[]*kilnv1.NamedContext{{Name: "a", Context: ref, Source: "docker-image://a"}}, rules.ErrInvalid, "give one"},
		"neither":       {[]*kilnv1.NamedContext{{Name: "a"}}, rules.ErrInvalid, "neither"},
		"tar":           {[]*kilnv1.NamedContext{{Name: "a", Context: &kilnv1.ContextRef{Digest: ref.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}}}, rules.ErrInvalid, "manifest"},
		"bad source":    {[]*kilnv1.NamedContext{{Name: "a", Source: "ftp://x/y"}}, rules.ErrInvalid, "neither docker-image"},
		"local source":  {[]*kilnv1.NamedContext{{Name: "a", Source: "./dir"}}, rules.ErrInvalid, "neither docker-image"},
		"git with user": {[]*kilnv1.NamedContext{{Name: "a", Source: "https://u:p@h/r.git"}}, rules.ErrInvalid, "credentials"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Check(tc.ncs)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Check = %v, want %v with %q", err, tc.want, tc.msg)
			}
			if strings.Contains(err.Error(), "u:p@") {
				t.Fatalf("Check's error shows the credentials: %v", err)
			}
		})
	}
}

func TestLocalName(t *testing.T) {
	if LocalName("base") != "base" || LocalName("context") != "_context" {
		t.Fatalf("LocalName: %q %q", LocalName("base"), LocalName("context"))
	}
}

// FuzzParseFlag: any flag value either fails with a rules error or gives a
// name that is normalised (normalising it again changes nothing) and a
// source the gateway's Check takes.
func FuzzParseFlag(f *testing.F) {
	for _, s := range []string{"base=./dir", "a=docker-image://x:1@sha256:" + strings.Repeat("0", 64), "x/y:z=https://h/r.git#m:s", "A=b", "a=git://h/r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, value, kind, err := ParseFlag(s)
		if err != nil {
			if !errors.Is(err, rules.ErrInvalid) && !errors.Is(err, rules.ErrOverLimit) {
				t.Fatalf("ParseFlag(%q): untyped error %v", s, err)
			}
			return
		}
		if again, err := NormalizeName(name); err != nil || again != name {
			t.Fatalf("ParseFlag(%q) name %q normalises to %q, %v", s, name, again, err)
		}
		if kind != KindLocal {
			if err := Check([]*kilnv1.NamedContext{{Name: name, Source: value}}); err != nil {
				t.Fatalf("ParseFlag(%q) took %q, which Check refuses: %v", s, value, err)
			}
		}
	})
}
