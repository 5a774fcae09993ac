package gitctx

import (
	"errors"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestIsGitURL(t *testing.T) {
	for s, want := range map[string]bool{
		"https://github.com/o/r.git":          true,
		"https://github.com/o/r.git#main:sub": true,
		"HTTP://h/r.git?ref=x":                true,
		"git://h/r":                           true,
		"ssh://git@h/r":                       true,
		"git@github.com:o/r.git":              true,
		"https://github.com/o/r":              false,
		"https://h/x.tar.gz":                  false,
		"./repo.git":                          false,
		"repo.git":                            false,
		"docker-image://x":                    false,
	} {
		if got := IsGitURL(s); got != want {
			t.Errorf("IsGitURL(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want URL
		err  string
	}{
		{in: "https://github.com/o/r.git", want: URL{Remote: "https://github.com/o/r.git", Scheme: "https", Host: "github.com"}},
		{in: "https://github.com/o/r.git#v1.2", want: URL{Remote: "https://github.com/o/r.git", Scheme: "https", Host: "github.com", Ref: "v1.2"}},
		{in: "HTTP://127.0.0.1:8080/r.git#main:app/", want: URL{Remote: "http://127.0.0.1:8080/r.git", Scheme: "http", Host: "127.0.0.1:8080", Ref: "main", Subdir: "app"}},
		{in: "git://h/r#:sub/dir", want: URL{Remote: "git://h/r", Scheme: "git", Host: "h", Subdir: "sub/dir"}},
		{in: "https://h/r.git#refs/pull/1/head", want: URL{Remote: "https://h/r.git", Scheme: "https", Host: "h", Ref: "refs/pull/1/head"}},
		{in: "https://h/r.git#" + strings.Repeat("a", 40), want: URL{Remote: "https://h/r.git", Scheme: "https", Host: "h", Ref: strings.Repeat("a", 40)}},
		{in: "https://x-access-token:ghp_secret@github.com/o/r.git", err: "credentials"},
		{in: "https://ghp_secret@github.com/o/r.git", err: "GIT_AUTH_TOKEN.github.com"},
		{in: "git@github.com:o/r.git", err: "ssh"},
		{in: "ssh://git@github.com/o/r.git", err: "ssh"},
		{in: "ftp://h/r.git", err: "scheme"},
		{in: "file:///tmp/r.git", err: "scheme"},
		{in: "https://h/r", err: "end in .git"},
		{in: "https:///r.git", err: "no host"},
		{in: "https://h/r.git?ref=main", err: "query"},
		{in: "https://h/r.git#-upload-pack=x", err: "not a valid Git ref"},
		{in: "https://h/r.git#a..b", err: "not a valid Git ref"},
		{in: "https://h/r.git#a b", err: "spaces"},
		{in: "https://h/r.git#a~1", err: "characters"},
		{in: "https://h/r.git#main:../x", err: "clean path"},
		{in: "https://h/r.git#main:a/../b", err: "clean path"},
		{in: "https://h/r.git\n", err: "control"},
		{in: "https://h/" + strings.Repeat("a", MaxURLBytes) + ".git", err: "at most"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.err)
				}
				if !errors.Is(err, rules.ErrInvalid) && !errors.Is(err, rules.ErrOverLimit) {
					t.Fatalf("Parse(%q): untyped error %v", tc.in, err)
				}
				if strings.Contains(err.Error(), "ghp_secret") {
					t.Fatalf("Parse(%q)'s error shows the credential: %v", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestSecretIDs(t *testing.T) {
	h, tok := SecretIDs("127.0.0.1:8080")
	if strings.Join(h, ",") != "GIT_AUTH_HEADER.127.0.0.1,GIT_AUTH_HEADER" || strings.Join(tok, ",") != "GIT_AUTH_TOKEN.127.0.0.1,GIT_AUTH_TOKEN" {
		t.Fatalf("SecretIDs(127.0.0.1:8080) = %v, %v", h, tok)
	}
	h, tok = SecretIDs("github.com")
	if h[0] != "GIT_AUTH_HEADER.github.com" || tok[0] != "GIT_AUTH_TOKEN.github.com" {
		t.Fatalf("SecretIDs(github.com) = %v, %v", h, tok)
	}
}

// FuzzParse: a URL Parse takes has no user information, a ref git cannot
// read as an option, a clean subdirectory, and prints back to a URL that
// parses to the same thing; a refused one is a rules error.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"https://h/r.git#main:sub", "git://h:9418/r#v1", "http://u@h/r.git", "https://h/r.git#:a/../b", "https://[::1]:80/r.git"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			if !errors.Is(err, rules.ErrInvalid) && !errors.Is(err, rules.ErrOverLimit) {
				t.Fatalf("Parse(%q): untyped error %v", s, err)
			}
			return
		}
		if strings.Contains(u.Remote, "@") && strings.Contains(u.Remote[:strings.Index(u.Remote, "@")], "//") && !strings.Contains(u.Remote[strings.Index(u.Remote, "//")+2:strings.Index(u.Remote, "@")], "/") {
			t.Fatalf("Parse(%q) kept user information: %q", s, u.Remote)
		}
		if strings.HasPrefix(u.Ref, "-") || strings.Contains(u.Subdir, "..") || strings.HasPrefix(u.Subdir, "/") {
			t.Fatalf("Parse(%q) = %+v", s, u)
		}
		again, err := Parse(u.String())
		if err != nil || again != u {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v, %v", s, u, u.String(), again, err)
		}
	})
}
