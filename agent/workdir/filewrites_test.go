//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package workdir_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/workdir"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestMaterializeManyFilesInParallel: files are written several at once;
// a context of 1 200 files in 12 directories, with hard links to files
// written just before them and symlinks among them, is on disk exactly as
// its manifest says, written whole again after a change of every file, and
// one file whose blob does not match fails the directory, naming it.
func TestMaterializeManyFilesInParallel(t *testing.T) {
	b := newBlobs()
	build := func(tag string) *kilnv1.ContextManifest {
		var es []*kilnv1.ContextEntry
		for i := range 1200 {
			p := fmt.Sprintf("d%02d/f%04d", i/100, i)
			es = append(es, file(b, p, fmt.Sprintf("%s line %d\n", tag, i), 0o644|uint32(i%2)*0o111, t0+int64(i)))
			if i%97 == 0 {
				es = append(es, hardlink(p+"-link", p), symlink(p+"-sym", fmt.Sprintf("f%04d", i), t0))
			}
		}
		return manifest(es...)
	}
	s, err := workdir.Open(workdir.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tag := range []string{"first", "second"} {
		m := build(tag)
		d, st, err := s.Materialize(t.Context(), "many", m, b)
		if err != nil {
			t.Fatal(err)
		}
		if err := diskErr(d.Path(), m, b); err != nil {
			t.Fatalf("%s context on disk: %v", tag, err)
		}
		if st.WrittenBytes != st.TotalBytes {
			t.Fatalf("%s context: %d bytes written, want all %d", tag, st.WrittenBytes, st.TotalBytes)
		}
		d.Release()
	}
	m := build("third")
	var bad *kilnv1.ContextEntry
	for _, e := range m.Entries[len(m.Entries)/2:] {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			bad = e
			break
		}
	}
	b.mu.Lock()
	b.blobs[bad.Digest.Hash] = []byte("something else\n")
	b.mu.Unlock()
	_, _, err = s.Materialize(t.Context(), "many", m, b)
	if !errors.Is(err, workdir.ErrBlobMismatch) || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad.Path)) {
		t.Fatalf("Materialize with a bad blob = %v, want ErrBlobMismatch naming %q", err, bad.Path)
	}
}
