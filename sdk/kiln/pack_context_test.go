package kiln

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// tarEntry is what a test checks of one tar entry.
type tarEntry struct {
	hdr     *tar.Header
	content string
}

// readTar returns the packed context's entries in order, checking that the
// digest and size the Context reports are those of the bytes it holds.
func readTar(t *testing.T, c *Context) []tarEntry {
	t.Helper()
	r, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != c.Digest() {
		t.Fatalf("Digest() = %s, content hashes to %s", c.Digest(), got)
	}
	if int64(len(data)) != c.Size() {
		t.Fatalf("Size() = %d, content is %d bytes", c.Size(), len(data))
	}
	var out []tarEntry
	tr := tar.NewReader(strings.NewReader(string(data)))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{hdr: hdr, content: string(b)})
	}
}

func names(entries []tarEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.hdr.Name)
	}
	return out
}

func pack(t *testing.T, dir, dockerfile string) *Context {
	t.Helper()
	c, err := PackContext(dir, dockerfile)
	if err != nil {
		t.Fatalf("PackContext: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPackContextDockerignore(t *testing.T) {
	tests := []struct {
		name       string
		files      map[string]string
		dockerfile string
		want       []string
	}{
		{
			name:  "no dockerignore sends everything in walk order",
			files: map[string]string{"Dockerfile": "FROM scratch", "b.txt": "b", "a/x.txt": "x", "a.txt": "a", "empty/": ""},
			want:  []string{"Dockerfile", "a/", "a/x.txt", "a.txt", "b.txt", "empty/"},
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			c := pack(t, dir, tt.dockerfile)
			got := names(readTar(t, c))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("tar entries\n got %q\nwant %q", got, tt.want)
			}
			files := 0
			for _, n := range tt.want {
				if !strings.HasSuffix(n, "/") {
					files++
				}
			}
			if c.Files() != files {
				t.Errorf("Files() = %d, want %d", c.Files(), files)
			}
		})
	}
}

func TestPackContextSymlinksAreKept(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"secret": "do not send"})
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Dockerfile": "FROM scratch",
		"data/a.txt": "a",
		"link-file":  "->data/a.txt",
		"link-dir":   "->data",
		"escape":     "->" + outside,
		"dangling":   "->nowhere",
	})
	entries := readTar(t, pack(t, dir, ""))
	want := map[string]string{"link-file": "data/a.txt", "link-dir": "data", "escape": outside, "dangling": "nowhere"}
	for _, e := range entries {
		if strings.Contains(e.content, "do not send") || strings.HasPrefix(e.hdr.Name, "escape/") || strings.HasPrefix(e.hdr.Name, "link-dir/") {
			t.Fatalf("symlink was followed: entry %q", e.hdr.Name)
		}
		target, ok := want[e.hdr.Name]
		if !ok {
			continue
		}
		if e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != target {
			t.Errorf("%s: type %c link %q, want symlink to %q", e.hdr.Name, e.hdr.Typeflag, e.hdr.Linkname, target)
		}
		delete(want, e.hdr.Name)
	}
	if len(want) != 0 {
		t.Errorf("symlinks missing from the tar: %v", want)
	}
}

func TestPackContextIsDeterministicAndKeepsModes(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "bin/run.sh": "#!/bin/sh\n", "z": "z"})
	if err := os.Chmod(filepath.Join(dir, "bin/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 890, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "bin/run.sh"), mtime, mtime); err != nil {
		t.Fatal(err)
	}

	first := pack(t, dir, "")
	second := pack(t, dir, "")
	if first.Digest() != second.Digest() {
		t.Fatalf("two packs of the same tree differ: %s vs %s", first.Digest(), second.Digest())
	}
	for _, e := range readTar(t, first) {
		h := e.hdr
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d %q:%q, want 0:0 without names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if h.Name == "bin/run.sh" {
			if h.Mode != 0o755 {
				t.Errorf("run.sh mode %o, want 755", h.Mode)
			}
			if !h.ModTime.Equal(mtime.Truncate(time.Second)) {
				t.Errorf("run.sh mtime %v, want %v", h.ModTime, mtime.Truncate(time.Second))
			}
			if e.content != "#!/bin/sh\n" {
				t.Errorf("run.sh content %q", e.content)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "z"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if third := pack(t, dir, ""); third.Digest() == first.Digest() {
		t.Fatal("changing a file did not change the digest")
	}
}

func TestPackContextErrors(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch", "sub/": "", "file": "x"})
	other := t.TempDir()
	writeTree(t, other, map[string]string{"Dockerfile": "FROM scratch"})
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
		{name: "relative Dockerfile outside", dir: dir, dockerfile: "../Dockerfile", want: "is outside the build context"},
		{name: "absolute Dockerfile outside", dir: dir, dockerfile: filepath.Join(other, "Dockerfile"), want: "is outside the build context"},
		{name: "context does not exist", dir: filepath.Join(dir, "nope"), want: "does not exist"},
		{name: "context is a file", dir: filepath.Join(dir, "file"), want: "is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := PackContext(tt.dir, tt.dockerfile)
			if err == nil {
				c.Close()
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

func TestPackContextAbsoluteDockerfileInside(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"docker/app.Dockerfile": "FROM scratch"})
	c := pack(t, dir, filepath.Join(dir, "docker", "app.Dockerfile"))
	if c.Dockerfile() != "docker/app.Dockerfile" {
		t.Fatalf("Dockerfile() = %q", c.Dockerfile())
	}
	if ref := c.Ref(); ref.GetDigest().GetHash() != c.Digest() || ref.GetDigest().GetSizeBytes() != c.Size() {
		t.Fatalf("Ref() = %v", ref)
	}
}

func TestContextCloseRemovesSpool(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch"})
	c, err := PackContext(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	spool := c.file
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spool); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("spool file still there after Close: %v", err)
	}
}
