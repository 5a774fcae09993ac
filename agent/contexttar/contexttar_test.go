package contexttar_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/contexttar"
	"github.com/kilnbuild/kiln/agent/localcas"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// blobs holds file contents by digest in memory.
type blobs map[string][]byte

var _ contexttar.Blobs = blobs(nil)

func (b blobs) Open(digest string) (io.ReadCloser, error) {
	data, ok := b[digest]
	if !ok {
		return nil, fmt.Errorf("%w: %s", localcas.ErrNotFound, digest)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func digestOf(data []byte) *kilnv1.Digest {
	sum := sha256.Sum256(data)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

func file(p string, mode uint32, mtime int64, content string, store blobs) *kilnv1.ContextEntry {
	d := digestOf([]byte(content))
	if store != nil {
		store[d.Hash] = []byte(content)
	}
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: mode, Size: d.SizeBytes, Digest: d, MtimeUnix: mtime}
}

func dir(p string, mode uint32, mtime int64) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: mode, MtimeUnix: mtime}
}

func symlink(p, target string) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, Mode: 0o777, LinkTarget: target, MtimeUnix: 1_600_000_000}
}

func hardlink(p, target string, mode uint32) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_HARDLINK, Mode: mode, LinkTarget: target, MtimeUnix: 1_600_000_000}
}

// entry is a tar entry as the tests compare it.
type entry struct {
	name     string
	typ      byte
	mode     int64
	size     int64
	linkname string
	mtime    int64
	content  string
}

func (e entry) String() string {
	return fmt.Sprintf("%c %q %#o size=%d link=%q mtime=%d content=%.20q", e.typ, e.name, e.mode, e.size, e.linkname, e.mtime, e.content)
}

// readTar returns the entries of an uncompressed tar and checks that every
// entry is owned by uid/gid 0 and its path stays inside the context.
func readTar(t testing.TB, data []byte) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("reading the tar back: %v", err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Fatalf("entry %q owned by %d/%d (%q/%q), want 0/0", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !filepath.IsLocal(strings.TrimSuffix(h.Name, "/")) {
			t.Fatalf("entry %q is outside the context", h.Name)
		}
		if h.Typeflag == tar.TypeLink && !filepath.IsLocal(h.Linkname) {
			t.Fatalf("hard link %q to %q, outside the context", h.Name, h.Linkname)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %q back: %v", h.Name, err)
		}
		out = append(out, entry{h.Name, h.Typeflag, h.Mode, h.Size, h.Linkname, h.ModTime.Unix(), string(body)})
	}
}

func TestWrite(t *testing.T) {
	long := strings.Repeat("long-directory-name/", 12) + "file.txt" // over ustar's 100+155 bytes
	store := blobs{}
	tests := []struct {
		name    string
		entries []*kilnv1.ContextEntry
		want    []entry
	}{
		{
			name: "every entry type",
			entries: []*kilnv1.ContextEntry{
				file("Dockerfile", 0o644, 1_700_000_000, "FROM scratch\n", store),
				dir("app", 0o750, 1_700_000_001),
				file("app/copy", 0o755, 1_700_000_002, "#!/bin/sh\necho hi\n", store),
				file("app/empty", 0o600, 1_700_000_003, "", store),
				symlink("app/etc", "../../../etc"),
				hardlink("app/main.sh", "app/copy", 0o755),
				symlink("app/shadow", "/etc/shadow"),
				file("app/suid", 0o4755, 1_700_000_004, "#!/bin/sh\n", store),
				dir("tmp", 0o1777, 1_700_000_005),
			},
			want: []entry{
				{"Dockerfile", tar.TypeReg, 0o644, 13, "", 1_700_000_000, "FROM scratch\n"},
				{"app/", tar.TypeDir, 0o750, 0, "", 1_700_000_001, ""},
				{"app/copy", tar.TypeReg, 0o755, 18, "", 1_700_000_002, "#!/bin/sh\necho hi\n"},
				{"app/empty", tar.TypeReg, 0o600, 0, "", 1_700_000_003, ""},
				{"app/etc", tar.TypeSymlink, 0o777, 0, "../../../etc", 1_600_000_000, ""},
				{"app/main.sh", tar.TypeLink, 0o755, 0, "app/copy", 1_600_000_000, ""},
				{"app/shadow", tar.TypeSymlink, 0o777, 0, "/etc/shadow", 1_600_000_000, ""},
				{"app/suid", tar.TypeReg, 0o4755, 10, "", 1_700_000_004, "#!/bin/sh\n"},
				{"tmp/", tar.TypeDir, 0o1777, 0, "", 1_700_000_005, ""},
			},
		},
		{
			name: "files in directories the manifest does not list",
			entries: []*kilnv1.ContextEntry{
				file("a/b/c", 0o644, 1, "c", store),
				file("a/b/d", 0o644, 2, "c", store), // same blob, twice
			},
			want: []entry{
				{"a/b/c", tar.TypeReg, 0o644, 1, "", 1, "c"},
				{"a/b/d", tar.TypeReg, 0o644, 1, "", 2, "c"},
			},
		},
		{
			name: "long and non-ASCII paths",
			entries: []*kilnv1.ContextEntry{
				file(long, 0o644, 5, "deep", store),
				symlink("ünïcödé", strings.Repeat("../x/", 40)),
			},
			want: []entry{
				{long, tar.TypeReg, 0o644, 4, "", 5, "deep"},
				{"ünïcödé", tar.TypeSymlink, 0o777, 0, strings.Repeat("../x/", 40), 1_600_000_000, ""},
			},
		},
		{
			name: "mtimes Docker would not keep become the epoch",
			entries: []*kilnv1.ContextEntry{
				file("after-2262", 0o644, math.MaxInt64, "x", store),
				file("before-1970", 0o644, -1, "x", store),
				file("epoch", 0o644, 0, "x", store),
				file("year-2200", 0o644, 7_258_118_400, "x", store),
			},
			want: []entry{
				{"after-2262", tar.TypeReg, 0o644, 1, "", 0, "x"},
				{"before-1970", tar.TypeReg, 0o644, 1, "", 0, "x"},
				{"epoch", tar.TypeReg, 0o644, 1, "", 0, "x"},
				{"year-2200", tar.TypeReg, 0o644, 1, "", 7_258_118_400, "x"},
			},
		},
		{
			name: "a socket is left out, as the docker CLI leaves it out",
			entries: []*kilnv1.ContextEntry{
				file("f", 0o644, 1, "f", store),
				func() *kilnv1.ContextEntry { e := file("sock", 0o755, 2, "", store); e.Socket = true; return e }(),
			},
			want: []entry{
				{"f", tar.TypeReg, 0o644, 1, "", 1, "f"},
			},
		},
		{name: "empty context"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := contexttar.Write(&buf, &kilnv1.ContextManifest{Entries: tc.entries}, ctxmanifest.DefaultLimits, store); err != nil {
				t.Fatal(err)
			}
			got := readTar(t, buf.Bytes())
			if len(got) != len(tc.want) {
				t.Fatalf("tar has %d entries, want %d:\n%v", len(got), len(tc.want), got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("entry %d:\n got %v\nwant %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestWriteRefusesUnsafeManifestsBeforeWriting(t *testing.T) {
	store := blobs{}
	ok := file("ok", 0o644, 0, "ok", store)
	tests := []struct {
		name    string
		entries []*kilnv1.ContextEntry
		want    string
	}{
		{"parent path", []*kilnv1.ContextEntry{ok, file("../etc/passwd", 0o644, 0, "x", store)}, `"../etc/passwd" escapes the build context`},
		{"escaping path", []*kilnv1.ContextEntry{file("a/../../x", 0o644, 0, "x", store), ok}, `"a/../../x" escapes the build context`},
		{"absolute path", []*kilnv1.ContextEntry{file("/etc/passwd", 0o644, 0, "x", store), ok}, "absolute"},
		{"entry under a symlink", []*kilnv1.ContextEntry{symlink("etc", "/etc"), symlink("etc/passwd", "x"), ok}, `inside "etc", which is not a directory`},
		{"hard link out of the context", []*kilnv1.ContextEntry{ok, hardlink("x", "../ok", 0o644)}, "outside the build context"},
		{"hard link to a later entry", []*kilnv1.ContextEntry{hardlink("a", "ok", 0o644), ok}, "not an earlier file"},
		{"device file", []*kilnv1.ContextEntry{ok, {Path: "sda", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o60644}}, "device files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := contexttar.Write(&buf, &kilnv1.ContextManifest{Entries: tc.entries}, ctxmanifest.DefaultLimits, store)
			if !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Write = %v, want rules.ErrInvalid containing %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Fatalf("Write wrote %d bytes of a refused manifest", buf.Len())
			}
		})
	}
}

func TestWriteStopsOnABadBlob(t *testing.T) {
	e := file("f", 0o644, 0, "twelve bytes", nil)
	tests := []struct {
		name  string
		store blobs
		want  error
	}{
		{"missing", blobs{}, localcas.ErrNotFound},
		{"shorter", blobs{e.Digest.Hash: []byte("eleven byte")}, contexttar.ErrBlobSize},
		{"longer", blobs{e.Digest.Hash: []byte("thirteen byte")}, contexttar.ErrBlobSize},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := contexttar.Write(io.Discard, &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{e}}, ctxmanifest.DefaultLimits, tc.store)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), `context entry "f"`) {
				t.Fatalf("Write = %v, want %v naming the entry", err, tc.want)
			}
		})
	}
}

// fuzzLimits keep fuzzed contexts small.
var fuzzLimits = ctxmanifest.Limits{MaxTotalBytes: 1 << 16, MaxEntries: 256, MaxPathLen: 1024}

// FuzzWrite feeds arbitrary manifest bytes: a manifest must either be
// refused by validation, with nothing written, or come out as a tar whose
// entries are exactly the manifest's and stay inside the context.
func FuzzWrite(f *testing.F) {
	seed := blobs{}
	for _, entries := range [][]*kilnv1.ContextEntry{
		{file("Dockerfile", 0o644, 1_700_000_000, "FROM scratch\n", seed), dir("a", 0o755, 1), file("a/b", 0o600, 2, "bee", seed),
			hardlink("a/c", "a/b", 0o600), symlink("a/d", "../../etc/passwd"), dir("e", 0o1777, -5)},
		{file("x", 0o644, math.MaxInt64, "same", seed), file("y", 0o644, 0, "same", seed)},
		{symlink("l", "/"), file("l/x", 0o644, 0, "x", seed)},
		{file("a", 0o644, 0, "a", seed), hardlink("b", "../a", 0o644)},
		{},
	} {
		data, err := ctxmanifest.Marshal(&kilnv1.ContextManifest{Entries: entries})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ctxmanifest.Unmarshal(data)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		store := blobs{}
		if _, verr := ctxmanifest.Validate(m, fuzzLimits); verr != nil {
			if err := contexttar.Write(&buf, m, fuzzLimits, store); err == nil || buf.Len() != 0 {
				t.Fatalf("Validate refuses the manifest (%v), Write = %v after %d bytes", verr, err, buf.Len())
			}
			return
		}
		// The first entry with a digest gives its blob; a later entry of
		// the same digest and another size cannot match that blob.
		conflict := false
		for _, e := range m.Entries {
			if e.Type != kilnv1.EntryType_ENTRY_TYPE_FILE {
				continue
			}
			if b, ok := store[e.Digest.Hash]; ok {
				conflict = conflict || int64(len(b)) != e.Size
				continue
			}
			store[e.Digest.Hash] = bytes.Repeat([]byte(e.Digest.Hash[7:9]), int(e.Size))[:e.Size]
		}
		err = contexttar.Write(&buf, m, fuzzLimits, store)
		if conflict {
			if !errors.Is(err, contexttar.ErrBlobSize) {
				t.Fatalf("Write of a manifest with two sizes for one digest = %v, want ErrBlobSize", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Write of a valid manifest: %v", err)
		}
		got := readTar(t, buf.Bytes())
		if len(got) != len(m.Entries) {
			t.Fatalf("tar has %d entries, the manifest %d", len(got), len(m.Entries))
		}
		for i, e := range m.Entries {
			want := entry{name: e.Path, mode: int64(e.Mode), mtime: contexttar.Mtime(e).Unix()}
			switch e.Type {
			case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
				want.typ, want.name = tar.TypeDir, e.Path+"/"
			case kilnv1.EntryType_ENTRY_TYPE_FILE:
				want.typ, want.size, want.content = tar.TypeReg, e.Size, string(store[e.Digest.Hash])
			case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
				want.typ, want.linkname = tar.TypeSymlink, e.LinkTarget
			case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
				want.typ, want.linkname = tar.TypeLink, e.LinkTarget
			}
			if got[i] != want {
				t.Fatalf("entry %d:\n got %v\nwant %v", i, got[i], want)
			}
		}
	})
}

func TestMtime(t *testing.T) {
	for in, want := range map[int64]int64{
		-1: 0, 0: 0, 1_700_000_000: 1_700_000_000, 9_223_372_036: 9_223_372_036,
		9_223_372_037: 0, math.MinInt64: 0, math.MaxInt64: 0,
	} {
		if got := contexttar.Mtime(&kilnv1.ContextEntry{MtimeUnix: in}); got.Unix() != want {
			t.Errorf("Mtime(%d) = %v, want %d", in, got, want)
		}
	}
}
