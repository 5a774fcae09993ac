package buildctx

import (
	"strings"
	"testing"

	"errors"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

const (
	fileT = kilnv1.EntryType_ENTRY_TYPE_FILE
	dirT  = kilnv1.EntryType_ENTRY_TYPE_DIRECTORY
	linkT = kilnv1.EntryType_ENTRY_TYPE_SYMLINK
	hardT = kilnv1.EntryType_ENTRY_TYPE_HARDLINK
)

var someDigest = "sha256:" + strings.Repeat("ab", 32)

func file(p string, size int64) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: fileT, Mode: 0o644, Size: size, Digest: &kilnv1.Digest{Hash: someDigest, SizeBytes: size}}
}

func dir(p string) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: dirT, Mode: 0o755}
}

func symlink(p, target string) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: linkT, Mode: 0o777, LinkTarget: target}
}

func hardlink(p, target string) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: hardT, Mode: 0o644, LinkTarget: target}
}

func socket(p string) *kilnv1.ContextEntry {
	e := file(p, 0)
	e.Socket = true
	return e
}

func manifest(entries ...*kilnv1.ContextEntry) *kilnv1.ContextManifest {
	return &kilnv1.ContextManifest{Entries: entries}
}

func TestValidate(t *testing.T) {
	small := Limits{MaxTotalBytes: 100, MaxEntries: 4, MaxPathLen: 32}
	tests := []struct {
		name    string
		m       *kilnv1.ContextManifest
		limits  Limits
		kind    error // nil: valid
		message string
	}{
		{name: "ordinary context", m: manifest(file("Dockerfile", 10), dir("src"), symlink("src/link", "../Dockerfile"), file("src/main.go", 20), hardlink("src/same", "src/main.go"))},
		{name: "symlink pointing outside is kept, not followed", m: manifest(symlink("etc", "/etc"))},
		{name: "dot-dot", m: manifest(file("../../etc/passwd", 1)), kind: rules.ErrInvalid, message: `"../../etc/passwd" escapes the build context`},
		{name: "dot-dot inside", m: manifest(file("a/../../x", 1)), kind: rules.ErrInvalid, message: `"a/../../x" escapes`},
		{name: "absolute", m: manifest(file("/etc/passwd", 1)), kind: rules.ErrInvalid, message: `"/etc/passwd" is an absolute path`},
		{name: "NUL byte", m: manifest(file("a\x00b", 1)), kind: rules.ErrInvalid, message: "NUL"},
		{name: "unclean path", m: manifest(file("a//b", 1)), kind: rules.ErrInvalid, message: "not a clean relative path"},
		{name: "backslash", m: manifest(file(`a\b`, 1)), kind: rules.ErrInvalid, message: `"a\\b" has a backslash in its name`},
		{name: "duplicate", m: manifest(file("a", 1), file("a", 1)), kind: rules.ErrInvalid, message: `"a" appears twice`},
		{name: "unsorted", m: manifest(file("b", 1), file("a", 1)), kind: rules.ErrInvalid, message: "out of order"},
		{name: "device file", m: manifest(&kilnv1.ContextEntry{Path: "dev/sda", Type: fileT, Mode: 0o60644, Digest: &kilnv1.Digest{Hash: someDigest}}), kind: rules.ErrInvalid, message: `"dev/sda" has mode 060644: device files`},
		{name: "hard link outside", m: manifest(hardlink("x", "../etc/shadow")), kind: rules.ErrInvalid, message: `"x" is a hard link to "../etc/shadow", outside the build context`},
		{name: "hard link absolute", m: manifest(hardlink("x", "/etc/shadow")), kind: rules.ErrInvalid, message: "outside the build context"},
		{name: "hard link to later entry", m: manifest(hardlink("a", "b"), file("b", 1)), kind: rules.ErrInvalid, message: "not an earlier file"},
		{name: "socket", m: manifest(socket("s"))},
		{name: "socket with content", m: manifest(func() *kilnv1.ContextEntry { e := file("s", 1); e.Socket = true; return e }()), kind: rules.ErrInvalid, message: `"s" is marked a socket but is not an empty file entry`},
		{name: "socket directory", m: manifest(func() *kilnv1.ContextEntry { e := dir("s"); e.Socket = true; return e }()), kind: rules.ErrInvalid, message: "marked a socket"},
		{name: "hard link to a socket", m: manifest(hardlink("a", "s"), socket("s")), kind: rules.ErrInvalid, message: "not an earlier file"},
		{name: "hard link to an earlier socket", m: manifest(socket("a"), hardlink("b", "a")), kind: rules.ErrInvalid, message: "not an earlier file"},
		{name: "entry under a symlink", m: manifest(symlink("a", "/etc"), file("a/passwd", 1)), kind: rules.ErrInvalid, message: `"a/passwd" is inside "a", which is not a directory`},
		{name: "entry deep under a symlink", m: manifest(symlink("a", "/etc"), file("a/b/c", 1)), kind: rules.ErrInvalid, message: `inside "a"`},
		{name: "file without digest", m: manifest(&kilnv1.ContextEntry{Path: "a", Type: fileT, Size: 3}), kind: rules.ErrInvalid, message: "needs a sha256 digest"},
		{name: "digest size disagrees", m: manifest(&kilnv1.ContextEntry{Path: "a", Type: fileT, Size: 3, Digest: &kilnv1.Digest{Hash: someDigest, SizeBytes: 4}}), kind: rules.ErrInvalid, message: "needs a sha256 digest"},
		{name: "unknown type", m: manifest(&kilnv1.ContextEntry{Path: "a"}), kind: rules.ErrInvalid, message: "unknown entry type"},
		{name: "too many entries", m: manifest(file("a", 1), file("b", 1), file("c", 1), file("d", 1), file("e", 1)), limits: small, kind: rules.ErrOverLimit, message: "5 entries, over the limit of 4"},
		{name: "too large", m: manifest(file("a", 60), file("b", 60)), limits: small, kind: rules.ErrOverLimit, message: "over 100 bytes (the total size limit)"},
		{name: "path too long", m: manifest(file(strings.Repeat("p", 33), 1)), limits: small, kind: rules.ErrOverLimit, message: "path of 33 bytes is over the limit of 32"},
		{name: "missing", m: nil, kind: rules.ErrInvalid, message: "missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.limits
			if l == (Limits{}) {
				l = DefaultLimits
			}
			_, err := Validate(tc.m, l)
			if tc.kind == nil {
				if err != nil {
					t.Fatalf("Validate = %v; want it accepted", err)
				}
				return
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("Validate = %v; want %v containing %q", err, tc.kind, tc.message)
			}
		})
	}
}

func TestValidateTotal(t *testing.T) {
	total, err := Validate(manifest(file("a", 5), dir("d"), file("d/b", 7)), DefaultLimits)
	if err != nil || total != 12 {
		t.Fatalf("Validate = %d, %v; want 12", total, err)
	}
}

func TestMarshalRoundTripIsDeterministic(t *testing.T) {
	m := manifest(file("Dockerfile", 10), dir("src"), file("src/a", 1))
	a, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Marshal(proto.Clone(m).(*kilnv1.ContextManifest))
	if string(a) != string(b) {
		t.Fatal("Marshal is not deterministic")
	}
	back, err := Unmarshal(a)
	if err != nil || !proto.Equal(back, m) {
		t.Fatalf("round trip: %v %v", back, err)
	}
	if _, err := Unmarshal([]byte{0xff, 0xff}); !errors.Is(err, rules.ErrInvalid) {
		t.Fatalf("Unmarshal of garbage = %v", err)
	}
}

// FuzzValidate: an accepted manifest never names a path outside the
// context, never places an entry under a non-directory, and every hard link
// points at an earlier file.
func FuzzValidate(f *testing.F) {
	seed, _ := Marshal(manifest(file("Dockerfile", 10), dir("src"), symlink("src/l", "/x"), hardlink("src/h", "Dockerfile")))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Unmarshal(data)
		if err != nil {
			return
		}
		if _, err := Validate(m, DefaultLimits); err != nil {
			return
		}
		types := map[string]kilnv1.EntryType{}
		for _, e := range m.Entries {
			if strings.HasPrefix(e.Path, "/") || e.Path == ".." || strings.HasPrefix(e.Path, "../") || strings.Contains(e.Path, "/../") || strings.HasSuffix(e.Path, "/..") {
				t.Fatalf("accepted escaping path %q", e.Path)
			}
			for p := e.Path; strings.Contains(p, "/"); {
				p = p[:strings.LastIndex(p, "/")]
				if ty, ok := types[p]; ok && ty != dirT {
					t.Fatalf("accepted %q under non-directory %q", e.Path, p)
				}
			}
			if e.Type == hardT && types[e.LinkTarget] != fileT {
				t.Fatalf("accepted hard link %q to %q", e.Path, e.LinkTarget)
			}
			types[e.Path] = e.Type
		}
	})
}

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "Dockerfile", want: "Dockerfile"},
		{in: "./docker/Dockerfile.prod", want: "docker/Dockerfile.prod"},
		{in: "a//b/../c", want: "a/c"},
		{in: "/etc/passwd", err: "is absolute"},
		{in: `\windows`, err: "is absolute"},
		{in: "../Dockerfile", err: "escapes the build context"},
		{in: "a/../..", err: "escapes the build context"},
		{in: ".", err: "escapes the build context"},
		{in: "a\x00b", err: "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := CleanPath(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, rules.ErrInvalid) {
					t.Fatalf("CleanPath(%q) = %q, %v; want an error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("CleanPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestValidDigest(t *testing.T) {
	for d, want := range map[string]bool{
		someDigest:                                 true,
		"sha256:" + strings.Repeat("A", 64):        false,
		"sha256:" + strings.Repeat("a", 63):        false,
		"sha512:" + strings.Repeat("a", 64):        false,
		strings.Repeat("a", 64):                    false,
		"sha256:" + strings.Repeat("a", 64) + "\n": false,
	} {
		if ValidDigest(d) != want {
			t.Errorf("ValidDigest(%q) = %v, want %v", d, !want, want)
		}
	}
}

// FuzzCleanPath: an accepted path is clean, relative and inside the
// context, and cleaning it again changes nothing.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"Dockerfile", "../x", "/abs", "a/./b", `a\..\..\b`, "a/b/../../..", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c, err := CleanPath(p)
		if err != nil {
			return
		}
		if c == "" || c == "." || c == ".." || strings.HasPrefix(c, "../") || strings.HasPrefix(c, "/") || strings.ContainsRune(c, 0) {
			t.Fatalf("CleanPath(%q) = %q, outside the context", p, c)
		}
		if again, err := CleanPath(c); err != nil || again != c {
			t.Fatalf("CleanPath(%q) = %q, but again %q, %v", p, c, again, err)
		}
	})
}
