package agent

import (
	"archive/tar"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// TestBuildExportsOutputToTheFarm: a build with --output local leaves the
// result's files in KILN_OUTPUTS, listed by the manifest its record's
// result names; one with --output oci leaves one image.tar; the agent's
// temporary directories are gone.
func TestBuildExportsOutputToTheFarm(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	a := testAgent(t, conn)
	n := strings.ToLower(rand.Text()[:12])
	c := &farmContext{t: t, blobs: a.blobs}
	c.file("Dockerfile", 0o644, 1_700_000_000, fmt.Sprintf(`FROM %s AS build
RUN mkdir -p /out/bin && echo out-%s > /out/result.txt && chmod 0600 /out/result.txt && \
    ln -s result.txt /out/latest && printf '#!/bin/sh\n' > /out/bin/tool && chmod 0755 /out/bin/tool && \
    chown 1000:2000 /out/bin/tool
FROM scratch
COPY --from=build /out/ /
`, base, n))
	ref := c.ref()
	store, err := conn.JS.ObjectStore(t.Context(), bus.BucketOutputs)
	if err != nil {
		t.Fatal(err)
	}
	read := func(t *testing.T, d *kilnv1.Digest) []byte {
		t.Helper()
		r, err := store.Get(t.Context(), strings.Replace(d.GetHash(), ":", "/", 1))
		if err != nil {
			t.Fatalf("read %s from %s: %v", d.GetHash(), bus.BucketOutputs, err)
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		if err != nil || int64(len(b)) != d.GetSizeBytes() || digestOf(b).Hash != d.GetHash() {
			t.Fatalf("blob %s: %d bytes (%v), want %d with that digest", d.GetHash(), len(b), err, d.GetSizeBytes())
		}
		return b
	}
	manifest := func(t *testing.T, rec *kilnv1.Build, lines []string, typ string) *kilnv1.ContextManifest {
		t.Helper()
		if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			t.Fatalf("build %s: %s\n%s", rec.State, rec.Error, strings.Join(lines, "\n"))
		}
		out := rec.GetResult().GetOutput()
		if out.GetType() != typ || out.GetManifest() == nil {
			t.Fatalf("result output %v, want type %s with a manifest", out, typ)
		}
		m, err := ctxmanifest.Unmarshal(read(t, out.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		total, err := ctxmanifest.Validate(m, ctxmanifest.DefaultLimits)
		if err != nil || total != out.Size {
			t.Fatalf("manifest: total %d, %v; result says %d", total, err, out.Size)
		}
		said := false
		for _, l := range lines {
			said = said || strings.HasPrefix(l, "[kiln] exported output type="+typ+" (")
		}
		if !said {
			t.Errorf("no log line says the output was exported:\n%s", strings.Join(lines, "\n"))
		}
		return m
	}

	// Both list the result's files; tar with their owners in the image.
	for _, typ := range []string{"local", "tar"} {
		t.Run(typ, func(t *testing.T) {
			rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: typ}}}, ref)
			m := manifest(t, rec, lines, typ)
			got := map[string]string{}
			for _, e := range m.Entries {
				switch e.Type {
				case kilnv1.EntryType_ENTRY_TYPE_FILE:
					got[e.Path] = fmt.Sprintf("file %#o %q", e.Mode, read(t, e.Digest))
				case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
					got[e.Path] = "symlink " + e.LinkTarget
				default:
					got[e.Path] = fmt.Sprintf("%s %#o", e.Type, e.Mode)
				}
				if typ == "tar" {
					got[e.Path] += fmt.Sprintf(" %d:%d", e.Uid, e.Gid)
				}
			}
			want := map[string]string{
				"result.txt": fmt.Sprintf("file 0600 %q", "out-"+n+"\n"),
				"latest":     "symlink result.txt",
				"bin":        "ENTRY_TYPE_DIRECTORY 0755",
				"bin/tool":   fmt.Sprintf("file 0755 %q", "#!/bin/sh\n"),
			}
			if typ == "tar" {
				for p := range want {
					want[p] += " 0:0"
				}
				want["bin/tool"] = strings.Replace(want["bin/tool"], " 0:0", " 1000:2000", 1)
			}
			if !maps.Equal(got, want) {
				t.Fatalf("output entries:\n%v\nwant:\n%v", got, want)
			}
		})
	}
	t.Run("oci", func(t *testing.T) {
		rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "oci"}}}, ref)
		m := manifest(t, rec, lines, "oci")
		if len(m.Entries) != 1 || m.Entries[0].Path != "image.tar" || m.Entries[0].Type != kilnv1.EntryType_ENTRY_TYPE_FILE {
			t.Fatalf("oci output entries %v, want one file image.tar", m.Entries)
		}
		if !strings.Contains(string(read(t, m.Entries[0].Digest)), "index.json") {
			t.Fatal("image.tar holds no index.json")
		}
	})
	t.Run("cacheonly", func(t *testing.T) {
		rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "cacheonly"}}}, ref)
		if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || rec.GetResult().GetOutput() != nil {
			t.Fatalf("cacheonly build: %s %s, output %v\n%s", rec.State, rec.Error, rec.GetResult().GetOutput(), strings.Join(lines, "\n"))
		}
	})
	left, err := os.ReadDir(outputsDir(a.cfg.WorkDir))
	if err != nil || len(left) != 0 {
		t.Fatalf("the agent's output directory holds %v (%v), want nothing", left, err)
	}
}

// TestListOutputKeepsHardLinksAfterTheirTarget: the walk meets "a/b"
// (inside "a") before "a-b", the manifest's order puts "a-b" first: the
// entry first in manifest order is the file and the others link to it.
func TestListOutputKeepsHardLinksAfterTheirTarget(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a-b"), []byte("same"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"a/b", "c"} {
		if err := os.Link(filepath.Join(dir, "a-b"), filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	m, files, err := listOutput(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctxmanifest.Validate(m, ctxmanifest.DefaultLimits); err != nil {
		t.Fatalf("manifest refused: %v (%v)", err, m.Entries)
	}
	var got []string
	for _, e := range m.Entries {
		got = append(got, fmt.Sprintf("%s %s %s", e.Path, e.Type, e.LinkTarget))
	}
	want := []string{
		"a ENTRY_TYPE_DIRECTORY ",
		"a-b ENTRY_TYPE_FILE ",
		"a/b ENTRY_TYPE_HARDLINK a-b",
		"c ENTRY_TYPE_HARDLINK a-b",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(files) != 1 {
		t.Fatalf("entries:\n%s\nwant:\n%s\n(%d files to upload, want 1)", strings.Join(got, "\n"), strings.Join(want, "\n"), len(files))
	}
}

// TestListOutputTar: the engine's tar becomes a manifest with its owners,
// modes and mtimes; the root entry and devices are left out, a hard link
// listed before its target in path order is re-pointed, the files are
// spooled once per content and the tar is removed.
func TestListOutputTar(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "output.tar")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	mtime := time.Unix(1_600_000_000, 0)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "z", Typeflag: tar.TypeReg, Mode: 0o4750, Uid: 1000, Gid: 2000, Size: 4, ModTime: mtime},
		{Name: "a", Typeflag: tar.TypeLink, Linkname: "z", Mode: 0o4750, Uid: 1000, Gid: 2000, ModTime: mtime},
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: mtime},
		{Name: "d/same", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4, ModTime: mtime},
		{Name: "d/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime},
		{Name: "d/up", Typeflag: tar.TypeSymlink, Linkname: "../z", Mode: 0o777, ModTime: mtime},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("data"))
		}
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	m, files, err := listOutputTar(name, filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctxmanifest.Validate(m, ctxmanifest.DefaultLimits); err != nil {
		t.Fatalf("manifest refused: %v", err)
	}
	var got []string
	for _, e := range m.Entries {
		got = append(got, fmt.Sprintf("%s %s %#o %d:%d %d %s", e.Path, e.Type, e.Mode, e.Uid, e.Gid, e.MtimeUnix, e.LinkTarget))
	}
	want := []string{
		"a ENTRY_TYPE_FILE 04750 1000:2000 1600000000 ",
		"d ENTRY_TYPE_DIRECTORY 0700 0:0 1600000000 ",
		"d/same ENTRY_TYPE_FILE 0644 0:0 1600000000 ",
		"d/up ENTRY_TYPE_SYMLINK 0777 0:0 1600000000 ../z",
		"z ENTRY_TYPE_HARDLINK 04750 1000:2000 1600000000 a",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(files) != 1 {
		t.Fatalf("spooled %v, want the one content once", files)
	}
	if b, err := os.ReadFile(files[0].path); err != nil || string(b) != "data" {
		t.Fatalf("spooled %q, %v", b, err)
	}
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Fatalf("the engine's tar is still there: %v", err)
	}
}

// TestNewRemovesStaleOutputs: exports an agent left when it stopped
// mid-export are removed when the next one starts on the work directory.
func TestNewRemovesStaleOutputs(t *testing.T) {
	work := filepath.Join(t.TempDir(), "work")
	stale := filepath.Join(outputsDir(work), "kiln-output-1", "big")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("left"), 0o600); err != nil {
		t.Fatal(err)
	}
	removeStaleOutputs(work, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if _, err := os.Stat(outputsDir(work)); !os.IsNotExist(err) {
		t.Fatalf("%s after the start: %v, want it gone", outputsDir(work), err)
	}
}
