package reference

import (
	"errors"
	"strings"
	"testing"
	"unicode"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Reference
		err  error // nil: valid
	}{
		{name: "short name", in: "alpine", want: Reference{Path: "alpine"}},
		{name: "short name with tag", in: "alpine:3.20", want: Reference{Path: "alpine", Tag: "3.20"}},
		{name: "hub namespace", in: "library/alpine:latest", want: Reference{Path: "library/alpine", Tag: "latest"}},
		{name: "registry with port", in: "127.0.0.1:5000/x:1", want: Reference{Domain: "127.0.0.1:5000", Path: "x", Tag: "1"}},
		{name: "registry port no tag", in: "localhost:5000/team/app", want: Reference{Domain: "localhost:5000", Path: "team/app"}},
		{name: "localhost", in: "localhost/app:v1", want: Reference{Domain: "localhost", Path: "app", Tag: "v1"}},
		{name: "dns registry deep path", in: "registry.example.com/a/b/c:1.0-rc_1", want: Reference{Domain: "registry.example.com", Path: "a/b/c", Tag: "1.0-rc_1"}},
		{name: "ipv6 registry", in: "[::1]:5000/app:2", want: Reference{Domain: "[::1]:5000", Path: "app", Tag: "2"}},
		{name: "upper-case first element is a domain", in: "Registry/app:1", want: Reference{Domain: "Registry", Path: "app", Tag: "1"}},
		{name: "separators", in: "my_app/web__front-end---x.y:tag", want: Reference{Path: "my_app/web__front-end---x.y", Tag: "tag"}},
		{name: "tag of 128 chars", in: "a:" + strings.Repeat("t", 128), want: Reference{Path: "a", Tag: strings.Repeat("t", 128)}},
		{name: "tag with upper case", in: "app:V1", want: Reference{Path: "app", Tag: "V1"}},

		{name: "upper case repository and space in tag", in: "UPPER/Case:bad tag", err: ErrInvalidFormat},
		{name: "upper case repository", in: "UPPER/Case:good", err: ErrUppercase},
		{name: "upper case short name", in: "Alpine", err: ErrUppercase},
		{name: "empty", in: "", err: errors.New("empty name")},
		{name: "tag too long", in: "a:" + strings.Repeat("t", 129), err: ErrInvalidFormat},
		{name: "tag starts with dot", in: "app:.x", err: ErrInvalidFormat},
		{name: "empty tag", in: "app:", err: ErrInvalidFormat},
		{name: "digest", in: "app@sha256:" + strings.Repeat("a", 64), err: ErrDigest},
		{name: "hex identifier", in: strings.Repeat("ab", 32), err: ErrIdentifier},
		{name: "trailing slash", in: "app/", err: ErrInvalidFormat},
		{name: "double slash", in: "a//b", err: ErrInvalidFormat},
		{name: "leading separator", in: "-app", err: ErrInvalidFormat},
		{name: "trailing separator", in: "app_", err: ErrInvalidFormat},
		{name: "triple underscore", in: "a___b", err: ErrInvalidFormat},
		{name: "bad port", in: "host:port/app", err: ErrInvalidFormat},
		{name: "domain only", in: "example.com/", err: ErrInvalidFormat},
		{name: "path too long", in: strings.Repeat("a", 256), err: ErrNameTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.err == nil {
				if err != nil {
					t.Fatalf("Parse(%q) = %v", tt.in, err)
				}
				if got != tt.want {
					t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
				}
				if got.String() != tt.in {
					t.Fatalf("String() = %q, want %q", got.String(), tt.in)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.in, got)
			}
			if !strings.Contains(err.Error(), `"`+tt.in+`"`) && tt.in != "" {
				t.Errorf("error %q does not name the tag", err)
			}
			if !errors.Is(err, tt.err) && !strings.Contains(err.Error(), tt.err.Error()) {
				t.Errorf("error %q, want %q", err, tt.err)
			}
		})
	}
}

// FuzzParse checks that whatever Parse accepts is well-formed: it prints back
// as given, the repository path is lower-case, and nothing has white space.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"alpine", "alpine:3", "127.0.0.1:5000/x:1", "[::1]:5000/a/b:c", "UPPER/Case:bad tag",
		"localhost/a", "a@sha256:00", "a:b:c", "a/b:c/d", "Registry/app", "a__b--c.d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			if !strings.Contains(err.Error(), "invalid tag") {
				t.Fatalf("error %q does not say the tag is invalid", err)
			}
			return
		}
		if r.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, r.String())
		}
		if r.Path == "" || strings.ToLower(r.Path) != r.Path || len(r.Path) > MaxPathLength {
			t.Fatalf("Parse(%q) accepted path %q", s, r.Path)
		}
		if len(r.Tag) > 128 || strings.ContainsAny(r.Tag, "/:@") {
			t.Fatalf("Parse(%q) accepted tag %q", s, r.Tag)
		}
		if strings.IndexFunc(s, unicode.IsSpace) >= 0 || strings.Contains(s, "@") {
			t.Fatalf("Parse(%q) accepted white space or a digest", s)
		}
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("reparse of %q = %+v, %v", s, again, err)
		}
	})
}
