package localcas_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// farm is the farm's real CAS on a real NATS server, with a count of the
// blobs fetched from it.
type farm struct {
	t   *testing.T
	cas *cas.Store
	obj jetstream.ObjectStore

	mu      sync.Mutex
	fetches map[string]int
}

func newFarm(t *testing.T) *farm {
	t.Helper()
	conn := bustest.Conn(t)
	s, err := cas.Open(t.Context(), conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := conn.JS.ObjectStore(t.Context(), bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	return &farm{t: t, cas: s, obj: obj, fetches: map[string]int{}}
}

// put uploads content and returns it as a Blob.
func (f *farm) put(content []byte) localcas.Blob {
	f.t.Helper()
	b := blobOf(content)
	if err := f.cas.Put(f.t.Context(), b.Digest, b.Size, bytes.NewReader(content)); err != nil {
		f.t.Fatal(err)
	}
	return b
}

// fetch is (*cas.Store).Get, counted.
func (f *farm) fetch(ctx context.Context, digest string) (io.ReadCloser, error) {
	f.mu.Lock()
	f.fetches[digest]++
	f.mu.Unlock()
	return f.cas.Get(ctx, digest)
}

func (f *farm) fetched(digest string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches[digest]
}

func (f *farm) totalFetched() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.fetches {
		n += c
	}
	return n
}

func blobOf(content []byte) localcas.Blob {
	sum := sha256.Sum256(content)
	return localcas.Blob{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(content))}
}

// content returns size bytes made of name.
func content(name string, size int) []byte {
	return bytes.Repeat([]byte(name), size/len(name)+1)[:size]
}

// open opens a store that keeps every blob on disk (the tests of its
// bound, eviction order, reopening and crashes use small blobs; memory_test
// covers the memory tier).
func open(t *testing.T, dir string, max int64) *localcas.Store {
	t.Helper()
	s, err := localcas.Open(localcas.Config{Dir: dir, MaxBytes: max, MemoryBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ensure runs Ensure and fails the test on error.
func ensure(t *testing.T, s *localcas.Store, f *farm, blobs ...localcas.Blob) (*localcas.Pin, localcas.Stats) {
	t.Helper()
	pin, st, err := s.Ensure(t.Context(), blobs, f.fetch)
	if err != nil {
		t.Fatal(err)
	}
	return pin, st
}

func readBlob(t *testing.T, s *localcas.Store, digest string) []byte {
	t.Helper()
	r, err := s.Open(digest)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// held lists which of blobs the store has, as "name=yes|no".
func held(s *localcas.Store, names []string, blobs ...localcas.Blob) string {
	var out []string
	for i, b := range blobs {
		v := "no"
		if s.Has(b.Digest) {
			v = "yes"
		}
		out = append(out, names[i]+"="+v)
	}
	return strings.Join(out, " ")
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestEnsureFetchesOnlyMissingBlobs(t *testing.T) {
	f := newFarm(t)
	s := open(t, t.TempDir(), 0)
	one, two, three := content("one", 1000), content("two", 2000), []byte{}
	a, b, c := f.put(one), f.put(two), f.put(three)

	pin, st := ensure(t, s, f, a)
	pin.Release()
	if st != (localcas.Stats{Fetched: 1, FetchedBytes: 1000}) {
		t.Fatalf("first Ensure: %+v", st)
	}
	// b twice: a context may hold the same content at several paths.
	pin, st = ensure(t, s, f, a, b, c, b)
	defer pin.Release()
	if want := (localcas.Stats{Fetched: 2, FetchedBytes: 2000, Local: 1, LocalBytes: 1000}); st != want {
		t.Fatalf("second Ensure: %+v, want %+v", st, want)
	}
	for _, bl := range []localcas.Blob{a, b, c} {
		if n := f.fetched(bl.Digest); n != 1 {
			t.Fatalf("blob %s fetched %d times, want once", bl.Digest, n)
		}
	}
	for want, bl := range map[string]localcas.Blob{string(one): a, string(two): b, string(three): c} {
		if got := readBlob(t, s, bl.Digest); string(got) != want {
			t.Fatalf("blob %s reads back %d bytes, want %d", bl.Digest, len(got), len(want))
		}
	}
	if n, size := s.Usage(); n != 3 || size != 3000 {
		t.Fatalf("Usage = %d blobs, %d bytes; want 3, 3000", n, size)
	}
	if _, err := s.Open(blobOf([]byte("never stored")).Digest); !errors.Is(err, localcas.ErrNotFound) {
		t.Fatalf("Open of an absent blob = %v, want ErrNotFound", err)
	}
}

func TestEnsureStoresNothingThatDoesNotMatchItsDigest(t *testing.T) {
	good := content("good", 5000)
	tests := []struct {
		name string
		// setup returns the blob to ask for; it may corrupt the farm's copy.
		setup func(t *testing.T, f *farm) localcas.Blob
	}{
		{"farm holds other bytes under the digest", func(t *testing.T, f *farm) localcas.Blob {
			b := blobOf(good)
			if _, err := f.obj.PutBytes(t.Context(), b.Digest, content("evil", 5000)); err != nil {
				t.Fatal(err)
			}
			return b
		}},
		{"farm holds a longer blob under the digest", func(t *testing.T, f *farm) localcas.Blob {
			b := blobOf(good)
			if _, err := f.obj.PutBytes(t.Context(), b.Digest, append(good, 'x')); err != nil {
				t.Fatal(err)
			}
			return b
		}},
		{"asked for with the wrong size", func(t *testing.T, f *farm) localcas.Blob {
			b := f.put(good)
			b.Size--
			return b
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFarm(t)
			dir := t.TempDir()
			s := open(t, dir, 0)
			other := f.put(content("other", 300))
			bad := tc.setup(t, f)
			pin, _, err := s.Ensure(t.Context(), []localcas.Blob{other, bad}, f.fetch)
			if !errors.Is(err, cas.ErrDigestMismatch) {
				t.Fatalf("Ensure = %v, want ErrDigestMismatch", err)
			}
			if pin != nil {
				t.Fatal("Ensure returned a Pin with its error")
			}
			if s.Has(bad.Digest) {
				t.Fatal("the mismatching blob was stored")
			}
			if left := dirEntries(t, filepath.Join(dir, "tmp")); len(left) != 0 {
				t.Fatalf("tmp/ holds %v after the failure", left)
			}
			for _, name := range dirEntries(t, filepath.Join(dir, "sha256")) {
				if "sha256:"+name != other.Digest {
					t.Fatalf("sha256/ holds %s", name)
				}
			}
		})
	}
}

func TestEvictsLeastRecentlyUsedDownToTheBound(t *testing.T) {
	f := newFarm(t)
	dir := t.TempDir()
	s := open(t, dir, 300)
	names := []string{"a", "b", "c", "d"}
	var blobs []localcas.Blob
	for _, n := range names {
		blobs = append(blobs, f.put(content(n, 100)))
	}
	a, b, c, d := blobs[0], blobs[1], blobs[2], blobs[3]
	for _, bl := range []localcas.Blob{a, b, c} {
		pin, _ := ensure(t, s, f, bl)
		pin.Release()
	}
	// Use a again, by Ensure, and c by Open: b is now the least recently used.
	pin, st := ensure(t, s, f, a)
	pin.Release()
	if st.Local != 1 {
		t.Fatalf("Ensure of a local blob: %+v", st)
	}
	readBlob(t, s, c.Digest)

	pin, _ = ensure(t, s, f, d)
	pin.Release()
	if got, want := held(s, names, blobs...), "a=yes b=no c=yes d=yes"; got != want {
		t.Fatalf("after d: %s, want %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256", strings.TrimPrefix(b.Digest, "sha256:"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("evicted blob's file: %v", err)
	}
	// Fetching b again evicts a, now the coldest.
	pin, _ = ensure(t, s, f, b)
	pin.Release()
	if got, want := held(s, names, blobs...), "a=no b=yes c=yes d=yes"; got != want {
		t.Fatalf("after b again: %s, want %s", got, want)
	}
	if n, size := s.Usage(); n != 3 || size != 300 {
		t.Fatalf("Usage = %d blobs, %d bytes; want 3, 300", n, size)
	}
}

func TestPinnedBlobIsNotEvicted(t *testing.T) {
	f := newFarm(t)
	s := open(t, t.TempDir(), 200)
	names := []string{"a", "b", "c", "d", "e"}
	var blobs []localcas.Blob
	for _, n := range names {
		blobs = append(blobs, f.put(content(n, 100)))
	}
	a, b, c, d, e := blobs[0], blobs[1], blobs[2], blobs[3], blobs[4]

	pinA, _ := ensure(t, s, f, a) // a running build's blob, the oldest
	for _, bl := range []localcas.Blob{b, c} {
		pin, _ := ensure(t, s, f, bl)
		pin.Release()
	}
	if got, want := held(s, names, blobs...), "a=yes b=no c=yes d=no e=no"; got != want {
		t.Fatalf("with a pinned: %s, want %s", got, want)
	}
	// Another build needs d and e while a is pinned: the store goes over
	// its bound rather than take blobs from running builds.
	pinDE, _ := ensure(t, s, f, d, e)
	if got, want := held(s, names, blobs...), "a=yes b=no c=no d=yes e=yes"; got != want {
		t.Fatalf("with a, d, e pinned: %s, want %s", got, want)
	}
	if _, size := s.Usage(); size != 300 {
		t.Fatalf("Usage = %d bytes, want 300 while three 100-byte blobs are pinned", size)
	}
	if got := readBlob(t, s, a.Digest); !bytes.Equal(got, content("a", 100)) {
		t.Fatal("pinned blob a changed")
	}
	pinA.Release()
	pinA.Release() // a second Release is a no-op
	if _, size := s.Usage(); size != 200 {
		t.Fatalf("Usage after a's release = %d bytes, want the bound, 200", size)
	}
	if got, want := held(s, names, blobs...), "a=no b=no c=no d=yes e=yes"; got != want {
		t.Fatalf("after a's release: %s, want %s", got, want)
	}
	pinDE.Release()
}

func TestReopenKeepsBlobsAndTheirOrder(t *testing.T) {
	f := newFarm(t)
	dir := t.TempDir()
	names := []string{"a", "b", "c"}
	var blobs []localcas.Blob
	for _, n := range names {
		blobs = append(blobs, f.put(content(n, 100)))
	}
	s, err := localcas.Open(localcas.Config{Dir: dir, MemoryBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := ensure(t, s, f, blobs...)
	pin.Release()
	if _, err := localcas.Open(localcas.Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "another process uses it") {
		t.Fatalf("second Open of a directory in use = %v, want a refusal", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A download the process did not finish.
	if err := os.WriteFile(filepath.Join(dir, "tmp", "blob-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, 0)
	if n, size := s.Usage(); n != 3 || size != 300 {
		t.Fatalf("reopened store holds %d blobs, %d bytes; want 3, 300", n, size)
	}
	if left := dirEntries(t, filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Fatalf("tmp/ holds %v after Open", left)
	}
	pin, st := ensure(t, s, f, blobs...)
	pin.Release()
	if st.Fetched != 0 || st.Local != 3 {
		t.Fatalf("Ensure after reopen: %+v, %d fetches in all; want all 3 local", st, f.totalFetched())
	}
	if got := f.totalFetched(); got != 3 {
		t.Fatalf("%d fetches in all, want 3", got)
	}
	s.Close()

	// Last uses b < c < a, as the blobs' mtimes say: reopened with a smaller
	// bound, the store evicts b first.
	base := time.Now().Add(-3 * time.Hour)
	for i, bl := range []localcas.Blob{blobs[1], blobs[2], blobs[0]} {
		at := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(filepath.Join(dir, "sha256", strings.TrimPrefix(bl.Digest, "sha256:")), at, at); err != nil {
			t.Fatal(err)
		}
	}
	s = open(t, dir, 200)
	if got, want := held(s, names, blobs...), "a=yes b=no c=yes"; got != want {
		t.Fatalf("reopened at 200 bytes: %s, want %s", got, want)
	}
}

func TestConcurrentEnsureFetchesOnce(t *testing.T) {
	f := newFarm(t)
	s := open(t, t.TempDir(), 0)
	blob := f.put(content("shared", 10_000))

	// The first Ensure's download is held until the second waits for it.
	started, waiting := make(chan struct{}), make(chan struct{})
	localcas.SetOnWait(s, func(string) { close(waiting) })
	slowFetch := func(ctx context.Context, digest string) (io.ReadCloser, error) {
		close(started)
		<-waiting
		return f.fetch(ctx, digest)
	}
	type result struct {
		st  localcas.Stats
		err error
	}
	first := make(chan result, 1)
	go func() {
		pin, st, err := s.Ensure(t.Context(), []localcas.Blob{blob}, slowFetch)
		pin.Release()
		first <- result{st, err}
	}()
	<-started
	pin, second, err := s.Ensure(t.Context(), []localcas.Blob{blob}, f.fetch)
	if err != nil {
		t.Fatal(err)
	}
	pin.Release()
	r := <-first
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.st != (localcas.Stats{Fetched: 1, FetchedBytes: 10_000}) || second != (localcas.Stats{Local: 1, LocalBytes: 10_000}) {
		t.Fatalf("downloader %+v, waiter %+v; want one fetch, one local", r.st, second)
	}
	if n := f.fetched(blob.Digest); n != 1 {
		t.Fatalf("blob fetched %d times, want once", n)
	}
}

func TestConcurrentEnsuresOfManyBlobsFetchEachOnce(t *testing.T) {
	f := newFarm(t)
	s := open(t, t.TempDir(), 0)
	var blobs []localcas.Blob
	for i := range 16 {
		blobs = append(blobs, f.put(content(string(rune('a'+i))+"-blob", 4000+i)))
	}
	const builds = 6
	stats := make([]localcas.Stats, builds)
	var wg sync.WaitGroup
	errs := make(chan error, builds)
	for i := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pin, st, err := s.Ensure(t.Context(), blobs, f.fetch)
			errs <- err
			stats[i] = st
			pin.Release()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	fetched := 0
	for _, st := range stats {
		fetched += st.Fetched
		if st.Fetched+st.Local != len(blobs) {
			t.Fatalf("one Ensure accounts for %+v, want %d blobs", st, len(blobs))
		}
	}
	if fetched != len(blobs) || f.totalFetched() != len(blobs) {
		t.Fatalf("%d blobs fetched by the stats, %d from the farm; want %d", fetched, f.totalFetched(), len(blobs))
	}
}

func TestWaiterTakesOverWhenTheDownloaderGivesUp(t *testing.T) {
	f := newFarm(t)
	s := open(t, t.TempDir(), 0)
	blob := f.put(content("taken-over", 3000))

	// The first build's download hangs until that build is cancelled,
	// which happens once a second build waits for the download.
	ctx, cancel := context.WithCancel(t.Context())
	localcas.SetOnWait(s, func(string) { cancel() })
	started := make(chan struct{})
	hangingFetch := func(ctx context.Context, digest string) (io.ReadCloser, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	firstErr := make(chan error, 1)
	go func() {
		_, _, err := s.Ensure(ctx, []localcas.Blob{blob}, hangingFetch)
		firstErr <- err
	}()
	<-started
	pin, st := ensure(t, s, f, blob)
	defer pin.Release()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Ensure = %v, want context.Canceled", err)
	}
	if st.Fetched != 1 || f.fetched(blob.Digest) != 1 {
		t.Fatalf("the waiting Ensure: %+v, %d fetches; want it to fetch the blob itself", st, f.fetched(blob.Digest))
	}
}
