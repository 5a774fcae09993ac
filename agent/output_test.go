package agent

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
    ln -s result.txt /out/latest && printf '#!/bin/sh\n' > /out/bin/tool && chmod 0755 /out/bin/tool
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

	t.Run("local", func(t *testing.T) {
		rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "local"}}}, ref)
		m := manifest(t, rec, lines, "local")
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
		}
		want := map[string]string{
			"result.txt": fmt.Sprintf("file 0600 %q", "out-"+n+"\n"),
			"latest":     "symlink result.txt",
			"bin":        "ENTRY_TYPE_DIRECTORY 0755",
			"bin/tool":   fmt.Sprintf("file 0755 %q", "#!/bin/sh\n"),
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("output entries:\n%v\nwant:\n%v", got, want)
		}
	})
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
	left, err := os.ReadDir(filepath.Clean(a.cfg.WorkDir) + "-outputs")
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
