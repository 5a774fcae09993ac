package localcas_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/localcas"
)

// blobFile reports whether blob b has a file in store directory dir.
func blobFile(dir string, b localcas.Blob) bool {
	_, err := os.Stat(filepath.Join(dir, "sha256", strings.TrimPrefix(b.Digest, "sha256:")))
	return err == nil
}

// TestSmallBlobsStayInMemory: with the default memory bound, small blobs
// are fetched into memory — no file — and read back whole, a blob over
// UnsyncedMaxBytes goes to disk; a later Ensure finds them all local.
// After a restart the small ones are fetched again, the large one is not.
func TestSmallBlobsStayInMemory(t *testing.T) {
	f := newFarm(t)
	dir := t.TempDir()
	contents := [][]byte{content("a", 100), content("b", 1000), {}}
	var small []localcas.Blob
	for _, c := range contents {
		small = append(small, f.put(c))
	}
	large := f.put(content("large", localcas.UnsyncedMaxBytes+1))
	s, err := localcas.Open(localcas.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	pin, st := ensure(t, s, f, append(small, large)...)
	if st.Fetched != 4 {
		t.Fatalf("first Ensure: %+v, want 4 fetched", st)
	}
	for i, b := range small {
		if blobFile(dir, b) {
			t.Fatalf("small blob %d has a file", i)
		}
		if got := readBlob(t, s, b.Digest); !bytes.Equal(got, contents[i]) {
			t.Fatalf("small blob %d read back as %d other bytes", i, len(got))
		}
	}
	if !blobFile(dir, large) {
		t.Fatal("the large blob has no file")
	}
	pin.Release()
	if n, size := s.Usage(); n != 4 || size != 100+1000+large.Size {
		t.Fatalf("Usage = %d blobs, %d bytes; want 4, %d", n, size, 1100+large.Size)
	}
	pin, st = ensure(t, s, f, append(small, large)...)
	pin.Release()
	if st.Local != 4 || f.totalFetched() != 4 {
		t.Fatalf("second Ensure: %+v after %d fetches, want all 4 local", st, f.totalFetched())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = localcas.Open(localcas.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pin, st = ensure(t, s, f, append(small, large)...)
	pin.Release()
	if st.Fetched != 3 || st.Local != 1 || f.fetched(large.Digest) != 1 {
		t.Fatalf("Ensure after a restart: %+v, want the 3 small blobs fetched again and the large one local", st)
	}
}

// TestMemoryBoundSpillsToDisk: small blobs beyond the memory bound go to
// disk while the ones in memory are pinned; once unpinned, the least
// recently used in memory make room for new ones and are fetched again
// when asked for.
func TestMemoryBoundSpillsToDisk(t *testing.T) {
	f := newFarm(t)
	dir := t.TempDir()
	var blobs []localcas.Blob
	for _, n := range []string{"a", "b", "c", "d"} {
		blobs = append(blobs, f.put(content(n, 100)))
	}
	a, b, c, d := blobs[0], blobs[1], blobs[2], blobs[3]
	s, err := localcas.Open(localcas.Config{Dir: dir, MemoryBytes: 250})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pinA, _ := ensure(t, s, f, a)
	pinB, _ := ensure(t, s, f, b)
	pinC, _ := ensure(t, s, f, c) // a and b fill the memory and are pinned
	if blobFile(dir, a) || blobFile(dir, b) || !blobFile(dir, c) {
		t.Fatalf("files: a=%v b=%v c=%v, want only c's (over the memory bound)", blobFile(dir, a), blobFile(dir, b), blobFile(dir, c))
	}
	if got := readBlob(t, s, c.Digest); !bytes.Equal(got, content("c", 100)) {
		t.Fatalf("c read back as %q", got)
	}
	pinC.Release()
	pinA.Release()
	pinB.Release() // a is now the least recently used in memory
	pinD, _ := ensure(t, s, f, d)
	pinD.Release()
	if blobFile(dir, d) || s.Has(a.Digest) || !s.Has(b.Digest) {
		t.Fatalf("after d: d on disk %v, a held %v, b held %v; want d in memory in place of a", blobFile(dir, d), s.Has(a.Digest), s.Has(b.Digest))
	}
	pin, st := ensure(t, s, f, a, b, c, d)
	pin.Release()
	if st.Fetched != 1 || f.fetched(a.Digest) != 2 {
		t.Fatalf("Ensure of all: %+v, a fetched %d times; want only a fetched again", st, f.fetched(a.Digest))
	}
}
