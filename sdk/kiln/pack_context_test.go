package kiln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// writeTree creates files under dir: a value starting with "->" makes a
// symlink to the rest, a key ending in "/" a directory.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(name, "/"):
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(content, "->"):
			if err := os.Symlink(strings.TrimPrefix(content, "->"), p); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// withStatCacheDir keeps the stat cache in dir ("" disables it).
func withStatCacheDir(dir string) PackOption {
	return func(o *packOptions) { o.cacheDir = dir }
}

// withClock makes PackContext read the time from now.
func withClock(now func() time.Time) PackOption {
	return func(o *packOptions) { o.now = now }
}

// inAnHour is a clock an hour ahead, so files a test just wrote are old
// enough for the stat cache to trust.
func inAnHour() time.Time { return time.Now().Add(time.Hour) }

// pack packs dir with a stat cache of its own and checks the manifest.
func pack(t *testing.T, dir, dockerfile string, opts ...PackOption) *Context {
	t.Helper()
	opts = append([]PackOption{withStatCacheDir(t.TempDir())}, opts...)
	c, err := PackContext(t.Context(), dir, dockerfile, opts...)
	if err != nil {
		t.Fatalf("PackContext: %v", err)
	}
	checkManifest(t, c)
	return c
}

// checkManifest checks that c's manifest passes the farm's rules, lists
// the directory of every entry, and that each file's digest and size are
// those of the file on disk.
func checkManifest(t *testing.T, c *Context) {
	t.Helper()
	m := c.Manifest()
	if err := farmtest.CheckManifest(m); err != nil {
		t.Fatalf("the farm would refuse the manifest: %v", err)
	}
	dirs := map[string]bool{}
	for _, e := range m.GetEntries() {
		if dir := path.Dir(e.Path); dir != "." && !dirs[dir] {
			t.Errorf("entry %q comes without a directory entry for %q", e.Path, dir)
		}
		switch e.Type {
		case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
			dirs[e.Path] = true
		case kilnv1.EntryType_ENTRY_TYPE_FILE:
			var data []byte
			var err error
			if !e.Socket { // a socket cannot be read: it is an empty file
				data, err = os.ReadFile(filepath.Join(c.Dir(), filepath.FromSlash(e.Path)))
			}
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if want := "sha256:" + hex.EncodeToString(sum[:]); e.Digest.Hash != want || e.Size != int64(len(data)) {
				t.Errorf("%s: digest %s size %d, the file hashes to %s size %d", e.Path, e.Digest.Hash, e.Size, want, len(data))
			}
		}
	}
}

// names renders the manifest's paths in order, directories with a "/".
func names(c *Context) []string {
	var out []string
	for _, e := range c.Manifest().GetEntries() {
		n := e.Path
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_DIRECTORY {
			n += "/"
		}
		out = append(out, n)
	}
	return out
}

func entry(t *testing.T, c *Context, p string) *kilnv1.ContextEntry {
	t.Helper()
	for _, e := range c.Manifest().GetEntries() {
		if e.Path == p {
			return e
		}
	}
	t.Fatalf("no entry %q in %q", p, names(c))
	return nil
}

func TestPackContextDockerignore(t *testing.T) {
	tests := []struct {
		name       string
		files      map[string]string
		dockerfile string
		// want lists the entries in manifest order (byte-wise by path),
		// directories with a trailing "/".
		want []string
	}{
		{
			name:  "no dockerignore sends everything sorted by path",
			files: map[string]string{"Dockerfile": "FROM scratch", "b.txt": "b", "a/x.txt": "x", "a.txt": "a", "a-b": "", "empty/": ""},
			want:  []string{"Dockerfile", "a/", "a-b", "a.txt", "a/x.txt", "b.txt", "empty/"},
		},
		{
			name: "**/*.go excludes go files at any depth",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "**/*.go\n",
				"main.go": "", "cmd/app/main.go": "", "cmd/app/README": "", "go.mod": "",
			},
			want: []string{".dockerignore", "Dockerfile", "cmd/", "cmd/app/", "cmd/app/README", "go.mod"},
		},
		{
			name: "exceptions follow the last matching line (docs: *.md, !README*.md, README-secret.md)",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "*.md\n!README*.md\nREADME-secret.md\n",
				"CHANGES.md": "", "README.md": "", "README-dev.md": "", "README-secret.md": "", "docs/guide.md": "",
			},
			want: []string{".dockerignore", "Dockerfile", "README-dev.md", "README.md", "docs/", "docs/guide.md"},
		},
		{
			name: "comments, temp? and */temp* (docs example)",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "# comment\n*/temp*\n*/*/temp*\ntemp?\n",
				"temp1": "", "temp12": "", "a/temporary.txt": "", "a/b/tempfile": "", "a/b/c/temp": "", "a/keep": "",
			},
			want: []string{".dockerignore", "Dockerfile", "a/", "a/b/", "a/b/c/", "a/b/c/temp", "a/keep", "temp12"},
		},
		{
			name: "excluded directory with an exception inside is entered",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "docs\n!docs/keep.txt\n",
				"docs/keep.txt": "k", "docs/drop.txt": "d", "docs/sub/x": "",
			},
			want: []string{".dockerignore", "Dockerfile", "docs/", "docs/keep.txt"},
		},
		{
			name: "wildcard exception re-includes inside an excluded directory",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "vendor\n!**/*.go\n",
				"vendor/lib/a.go": "", "vendor/lib/a.c": "", "vendor/README": "",
			},
			want: []string{".dockerignore", "Dockerfile", "vendor/", "vendor/lib/", "vendor/lib/a.go"},
		},
		{
			name: "Dockerfile and .dockerignore ignored yet sent",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "Dockerfile\n.dockerignore\n*\n", "src/app": "",
			},
			want: []string{".dockerignore", "Dockerfile"},
		},
		{
			name: "Dockerfile in an ignored directory is sent, with its directory",
			files: map[string]string{
				".dockerignore": "build\n", "build/Dockerfile": "FROM scratch", "build/other": "", "main.c": "",
			},
			dockerfile: "build/Dockerfile",
			want:       []string{".dockerignore", "build/", "build/Dockerfile", "main.c"},
		},
		{
			name: "Dockerfile-specific ignore file wins over .dockerignore",
			files: map[string]string{
				".dockerignore": "*.c\n", "app.Dockerfile": "FROM scratch", "app.Dockerfile.dockerignore": "*.h\n",
				"main.c": "", "main.h": "",
			},
			dockerfile: "app.Dockerfile",
			want:       []string{".dockerignore", "app.Dockerfile", "app.Dockerfile.dockerignore", "main.c"},
		},
		{
			name: "leading slash and trailing spaces are normalised",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "/node_modules  \n", "node_modules/x/index.js": "", "index.js": "",
			},
			want: []string{".dockerignore", "Dockerfile", "index.js"},
		},
		{
			name: "ignored names the farm could not take are no error",
			files: map[string]string{
				"Dockerfile": "FROM scratch", ".dockerignore": "bad*\n", "bad\xff": "", `bad\name`: "", "good": "",
			},
			want: []string{".dockerignore", "Dockerfile", "good"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			c := pack(t, dir, tt.dockerfile)
			if got := names(c); !slices.Equal(got, tt.want) {
				t.Fatalf("manifest entries\n got %q\nwant %q", got, tt.want)
			}
			var files, dirs int
			for _, n := range tt.want {
				if strings.HasSuffix(n, "/") {
					dirs++
				} else {
					files++
				}
			}
			if s := c.Stats(); s.Files != files || s.Dirs != dirs || s.Symlinks != 0 {
				t.Errorf("Stats() = %+v, want %d files and %d dirs", s, files, dirs)
			}
		})
	}
}

func TestPackContextEntries(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"secret": "do not send"})
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Dockerfile":     "FROM scratch\n",
		"bin/run.sh":     "#!/bin/sh\n",
		"bin/suid":       "x",
		"private/key":    "k",
		"tmp/":           "",
		"data/a.txt":     "a",
		"data/empty":     "",
		"link-file":      "->data/a.txt",
		"link-dir":       "->data",
		"escape":         "->" + outside,
		"dangling":       "->nowhere",
		"data/relparent": "->../Dockerfile",
	})
	chmod := map[string]os.FileMode{
		"Dockerfile": 0o644, "bin": 0o755, "bin/run.sh": 0o755, "bin/suid": 0o755 | os.ModeSetuid,
		"data/a.txt": 0o644, "data/empty": 0o644, "private": 0o700, "private/key": 0o600, "tmp": 0o777 | os.ModeSticky,
	}
	for p, m := range chmod {
		if err := os.Chmod(filepath.Join(dir, p), m); err != nil {
			t.Fatal(err)
		}
	}
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 890, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "bin/run.sh"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	// A hard link is kept as a link to the first file of its inode.
	if err := os.Link(filepath.Join(dir, "data/a.txt"), filepath.Join(dir, "data/hardlink")); err != nil {
		t.Fatal(err)
	}

	c := pack(t, dir, "")
	want := []string{
		"Dockerfile", "bin/", "bin/run.sh", "bin/suid", "dangling", "data/", "data/a.txt", "data/empty", "data/hardlink",
		"data/relparent", "escape", "link-dir", "link-file", "private/", "private/key", "tmp/",
	}
	if got := names(c); !slices.Equal(got, want) {
		t.Fatalf("manifest entries\n got %q\nwant %q", got, want)
	}

	tests := []struct {
		path   string
		typ    kilnv1.EntryType
		mode   uint32
		target string
		size   int64
	}{
		{path: "Dockerfile", typ: kilnv1.EntryType_ENTRY_TYPE_FILE, mode: 0o644, size: 13},
		{path: "bin", typ: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, mode: 0o755},
		{path: "bin/run.sh", typ: kilnv1.EntryType_ENTRY_TYPE_FILE, mode: 0o755, size: 10},
		{path: "bin/suid", typ: kilnv1.EntryType_ENTRY_TYPE_FILE, mode: 0o4755, size: 1},
		{path: "private", typ: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, mode: 0o700},
		{path: "private/key", typ: kilnv1.EntryType_ENTRY_TYPE_FILE, mode: 0o600, size: 1},
		{path: "tmp", typ: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, mode: 0o1777},
		{path: "data/empty", typ: kilnv1.EntryType_ENTRY_TYPE_FILE, mode: 0o644},
		{path: "data/hardlink", typ: kilnv1.EntryType_ENTRY_TYPE_HARDLINK, mode: 0o644, target: "data/a.txt"},
		{path: "link-file", typ: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, mode: 0o777, target: "data/a.txt"},
		{path: "link-dir", typ: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, mode: 0o777, target: "data"},
		{path: "escape", typ: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, mode: 0o777, target: filepath.ToSlash(outside)},
		{path: "dangling", typ: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, mode: 0o777, target: "nowhere"},
		{path: "data/relparent", typ: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, mode: 0o777, target: "../Dockerfile"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			e := entry(t, c, tt.path)
			if e.Type != tt.typ || e.Mode != tt.mode || e.LinkTarget != tt.target || e.Size != tt.size {
				t.Errorf("entry %v\nwant type %v mode %#o target %q size %d", e, tt.typ, tt.mode, tt.target, tt.size)
			}
			if (e.Digest != nil) != (tt.typ == kilnv1.EntryType_ENTRY_TYPE_FILE) {
				t.Errorf("digest %v on a %v", e.Digest, e.Type)
			}
		})
	}
	if got := entry(t, c, "bin/run.sh").MtimeUnix; got != mtime.Unix() {
		t.Errorf("run.sh mtime %d, want %d", got, mtime.Unix())
	}
	want0 := ContextStats{Files: 6, Symlinks: 5, HardLinks: 1, Dirs: 4, Bytes: 13 + 10 + 1 + 1 + 1, Hashed: 6, HashedBytes: 13 + 10 + 1 + 1 + 1}
	if s := c.Stats(); s != want0 {
		t.Errorf("Stats() = %+v, want %+v", s, want0)
	}
	if len(c.blobs) != 6 {
		t.Errorf("%d distinct blobs, want 6", len(c.blobs))
	}
}

func TestPackContextErrors(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "sub/": "", "file": "x"})
	other := t.TempDir()
	writeTree(t, other, map[string]string{"Dockerfile": "FROM scratch", "Big.Dockerfile": strings.Repeat("#", 256<<10+1)})
	badUTF8 := t.TempDir()
	writeTree(t, badUTF8, map[string]string{"Dockerfile": "FROM scratch", "sub/caf\xe9.txt": ""})
	backslash := t.TempDir()
	writeTree(t, backslash, map[string]string{"Dockerfile": "FROM scratch", `dir\name/`: ""})
	tests := []struct {
		name       string
		dir        string
		dockerfile string
		want       string
	}{
		{name: "missing Dockerfile", dir: dir, dockerfile: "x/Dockerfile", want: `Dockerfile "x/Dockerfile" not found in build context ` + dir},
		{name: "missing default Dockerfile", dir: filepath.Join(dir, "sub"), want: `Dockerfile "Dockerfile" not found in build context ` + filepath.Join(dir, "sub")},
		{name: "Dockerfile under a file", dir: dir, dockerfile: "file/Dockerfile", want: `Dockerfile "file/Dockerfile" not found in build context ` + dir},
		{name: "Dockerfile is a directory", dir: dir, dockerfile: "sub", want: `Dockerfile "sub" in build context ` + dir + " is a directory"},
		{name: "Dockerfile outside over the limit", dir: dir, dockerfile: filepath.Join(other, "Big.Dockerfile"), want: "travels with the build, at most 262144 bytes"},
		{name: "context does not exist", dir: filepath.Join(dir, "nope"), want: "does not exist"},
		{name: "context is a file", dir: filepath.Join(dir, "file"), want: "is not a directory"},
		{name: "file name not UTF-8", dir: badUTF8, want: `context entry "sub/caf\xe9.txt" is not valid UTF-8: rename it or list it in .dockerignore`},
		{name: "directory name with a backslash", dir: backslash, want: `context entry "dir\\name" has a backslash in its name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PackContext(t.Context(), tt.dir, tt.dockerfile, withStatCacheDir(""))
			if err == nil {
				t.Fatal("PackContext succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("code %v, want InvalidArgument", status.Code(err))
			}
		})
	}
}

func TestPackContextCancelled(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "a": "a"})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := PackContext(ctx, dir, "", withStatCacheDir(""))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func TestPackContextAbsoluteDockerfileInside(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"docker/app.Dockerfile": "FROM scratch"})
	c := pack(t, dir, filepath.Join(dir, "docker", "app.Dockerfile"))
	if c.Dockerfile() != "docker/app.Dockerfile" {
		t.Fatalf("Dockerfile() = %q", c.Dockerfile())
	}
	if c.Ref() != nil {
		t.Fatalf("Ref() = %v before UploadContext, want nil", c.Ref())
	}
}

func TestPackContextIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "a/b/c": "c", "a.b": "x", "z": "z"})
	first := pack(t, dir, "")
	second := pack(t, dir, "", withStatCacheDir(""))
	if got, want := second.Manifest().String(), first.Manifest().String(); got != want {
		t.Fatalf("two packs of the same tree differ:\n%s\n%s", got, want)
	}
}

// hashProgress records the calls of WithHashProgress.
type hashProgress struct{ calls []ContextProgress }

func (h *hashProgress) option() PackOption {
	return WithHashProgress(func(p ContextProgress) { h.calls = append(h.calls, p) })
}

func TestPackContextHashProgress(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "a": strings.Repeat("a", 3*hashBufferSize+1), "b": "b", "empty": ""})
	var h hashProgress
	c := pack(t, dir, "", h.option())
	if len(h.calls) < 4 {
		t.Fatalf("%d progress calls, want one per file at least: %+v", len(h.calls), h.calls)
	}
	last := h.calls[len(h.calls)-1]
	want := ContextProgress{Files: 4, TotalFiles: 4, Bytes: c.Stats().Bytes, TotalBytes: c.Stats().Bytes}
	if last != want {
		t.Errorf("last progress %+v, want %+v", last, want)
	}
	for i := 1; i < len(h.calls); i++ {
		if h.calls[i].Bytes < h.calls[i-1].Bytes || h.calls[i].Files < h.calls[i-1].Files {
			t.Fatalf("progress went backwards: %+v", h.calls)
		}
	}
}

// TestPackContextDockerfileAsDocker: the Dockerfile is found as docker
// finds it — the lowercase fallback, symlinks resolved on the client, one
// outside the context (or given as data, -f -) sent apart from it.
func TestPackContextDockerfileAsDocker(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"prod.Dockerfile": "FROM scratch\nLABEL from=outside\n"})
	tests := []struct {
		name       string
		files      map[string]string
		dockerfile string
		opts       []PackOption
		want       string // Context.Dockerfile
		inline     string // Context.DockerfileInline
	}{
		{name: "lowercase fallback", files: map[string]string{"dockerfile": "FROM scratch"}, want: "dockerfile"},
		{name: "Dockerfile wins over dockerfile", files: map[string]string{"dockerfile": "", "Dockerfile": ""}, want: "Dockerfile"},
		{name: "no fallback when named", files: map[string]string{"dockerfile": "", "Dockerfile": ""}, dockerfile: "dockerfile", want: "dockerfile"},
		{name: "symlink inside", files: map[string]string{"build/real.Dockerfile": "FROM scratch", "Dockerfile": "->build/real.Dockerfile"}, want: "build/real.Dockerfile"},
		{name: "symlink outside", files: map[string]string{"Dockerfile": "->" + filepath.Join(outside, "prod.Dockerfile")},
			want: "prod.Dockerfile", inline: "FROM scratch\nLABEL from=outside\n"},
		{name: "absolute outside", files: map[string]string{"Dockerfile": "FROM busybox"}, dockerfile: filepath.Join(outside, "prod.Dockerfile"),
			want: "prod.Dockerfile", inline: "FROM scratch\nLABEL from=outside\n"},
		{name: "data (-f -)", files: map[string]string{"a": ""}, opts: []PackOption{WithDockerfile([]byte("FROM scratch\n"))},
			want: "Dockerfile", inline: "FROM scratch\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			c := pack(t, dir, tt.dockerfile, tt.opts...)
			if c.Dockerfile() != tt.want || string(c.DockerfileInline()) != tt.inline {
				t.Errorf("Dockerfile %q inline %q, want %q inline %q", c.Dockerfile(), c.DockerfileInline(), tt.want, tt.inline)
			}
		})
	}
	// A relative path is from the context directory, as before.
	dir := filepath.Join(outside, "ctx")
	writeTree(t, dir, map[string]string{"a": ""})
	c := pack(t, dir, "../prod.Dockerfile")
	if c.Dockerfile() != "prod.Dockerfile" || !strings.Contains(string(c.DockerfileInline()), "from=outside") {
		t.Errorf("../prod.Dockerfile: %q inline %q", c.Dockerfile(), c.DockerfileInline())
	}
}

// Hard links stay links to the first of their inode in path order (the
// manifest's order, which is not the walk's: "a.txt" sorts before "a/b"),
// among the files sent: an ignored first link leaves the next one the file.
func TestPackContextHardLinks(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n", "a/b": "shared", ".dockerignore": "0-ignored\n", "x": "other"})
	for _, l := range []string{"a.txt", "z", "0-ignored"} {
		if err := os.Link(filepath.Join(dir, "a/b"), filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	c := pack(t, dir, "")
	hard := kilnv1.EntryType_ENTRY_TYPE_HARDLINK
	for _, tt := range []struct {
		path   string
		typ    kilnv1.EntryType
		target string
	}{
		{"a.txt", kilnv1.EntryType_ENTRY_TYPE_FILE, ""},
		{"a/b", hard, "a.txt"},
		{"z", hard, "a.txt"},
		{"x", kilnv1.EntryType_ENTRY_TYPE_FILE, ""},
	} {
		e := entry(t, c, tt.path)
		if e.Type != tt.typ || e.LinkTarget != tt.target || (e.Type == hard) != (e.Digest == nil) {
			t.Errorf("entry %v; want type %v target %q", e, tt.typ, tt.target)
		}
	}
	if s := c.Stats(); s.Files != 4 || s.HardLinks != 2 {
		t.Errorf("Stats() = %+v; want 4 files (Dockerfile, .dockerignore, a.txt, x) and 2 hard links", s)
	}
}
