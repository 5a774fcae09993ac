package localcas_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/localcas"
)

// TestOpenAfterACrashDropsTornSmallBlobs: small blobs are renamed in
// without a sync of their own, so a store that was not closed checks them
// when it opens again: a blob whose bytes no longer match its name is
// dropped (and fetched again), the others are kept. A closed store is
// marked clean and opens without the check.
func TestOpenAfterACrashDropsTornSmallBlobs(t *testing.T) {
	f := newFarm(t)
	dir := t.TempDir()
	var blobs []localcas.Blob
	for _, n := range []string{"a", "b", "c"} {
		blobs = append(blobs, f.put(content(n, 100)))
	}
	s, err := localcas.Open(localcas.Config{Dir: dir, MemoryBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := ensure(t, s, f, blobs...)
	pin.Release()
	if err := localcas.Crash(s); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(dir, "sha256", strings.TrimPrefix(blobs[1].Digest, "sha256:"))
	if err := os.WriteFile(torn, make([]byte, 100), 0o600); err != nil { // the same size, zeros: lost on a crash
		t.Fatal(err)
	}

	s = open(t, dir, 0)
	if n, _ := s.Usage(); n != 2 || s.Has(blobs[1].Digest) {
		t.Fatalf("after a crash the store holds %d blobs (torn one: %v), want the 2 intact ones", n, s.Has(blobs[1].Digest))
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Fatalf("the torn blob's file is still there: %v", err)
	}
	pin, st := ensure(t, s, f, blobs...)
	pin.Release()
	if st.Fetched != 1 || st.Local != 2 {
		t.Fatalf("Ensure after the crash: %+v, want the torn blob fetched again and 2 local", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "clean")); err != nil {
		t.Fatalf("a closed store is not marked clean: %v", err)
	}
	s = open(t, dir, 0)
	if _, err := os.Stat(filepath.Join(dir, "clean")); !os.IsNotExist(err) {
		t.Fatalf("an open store is still marked clean: %v", err)
	}
	if n, _ := s.Usage(); n != 3 {
		t.Fatalf("after a clean close the store holds %d blobs, want 3", n)
	}
}
