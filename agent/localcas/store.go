package localcas

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/services/cas"
)

// DefaultMaxBytes bounds a store opened without a bound: 10 GiB.
const DefaultMaxBytes int64 = 10 << 30

// DefaultMemoryBytes bounds the small blobs a store keeps in memory only
// when opened without a bound: 64 MiB.
const DefaultMemoryBytes int64 = 64 << 20

const (
	// fetchConcurrency bounds the blobs one Ensure fetches at once: many,
	// since a context of small files is mostly round trips (and the farm's
	// CAS answers concurrent reads of small blobs in batches); at most
	// largeFetchConcurrency of them larger than UnsyncedMaxBytes.
	fetchConcurrency      = 256
	largeFetchConcurrency = 8
	// touchEvery is how stale a blob's mtime may get before a use rewrites it.
	touchEvery = time.Hour
)

// ErrNotFound: the blob is not in the local store.
var ErrNotFound = errors.New("blob is not in the local store")

var (
	errLocked = errors.New("cache directory is locked")
	hexName   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Config opens a Store.
type Config struct {
	// Dir holds the blobs; it is created if missing.
	Dir string
	// MaxBytes bounds the bytes of the blobs kept; 0 means DefaultMaxBytes.
	// Pinned blobs may take the store over its bound until they are released.
	MaxBytes int64
	// MemoryBytes bounds the small blobs (up to UnsyncedMaxBytes) that are
	// fetched into memory and never written to disk (memory.go); 0 means
	// DefaultMemoryBytes, negative keeps every blob on disk.
	MemoryBytes int64
	// Logger receives evictions and failures to delete; nil discards them.
	Logger *slog.Logger
}

// Blob names a blob to make local.
type Blob struct {
	Digest string // "sha256:<64 hex>"
	Size   int64  // its size in bytes; negative if unknown
}

// FetchFunc opens a blob of the farm's store; (*cas.Store).Get is one.
type FetchFunc func(ctx context.Context, digest string) (io.ReadCloser, error)

// Stats counts how Ensure found the distinct blobs it was asked for.
type Stats struct {
	// Fetched blobs were downloaded by this call.
	Fetched      int
	FetchedBytes int64
	// Local blobs were on disk already, or were downloaded meanwhile by a
	// concurrent Ensure that this call waited for.
	Local      int
	LocalBytes int64
}

// Store is a directory of blobs with a size bound and least-recently-used
// eviction. Its methods are safe for concurrent use.
type Store struct {
	dir       string
	max       int64
	log       *slog.Logger
	lock      *os.File
	onWait    func(digest string) // test hook: a caller waits for a fetch in flight
	synced    groupSync           // makes fetched blobs durable before they are renamed in
	closeOnce sync.Once
	closeErr  error
	tainted   atomic.Bool // a torn small blob could not be removed: never mark clean

	// mu guards the fields below. It is held across a blob's removal from
	// disk, never across a download.
	mu       sync.Mutex
	blobs    map[string]*blob
	lru      list.List // unpinned blobs on disk, most recently used at the front
	size     int64     // sum of the sizes of blobs on disk
	inflight map[string]*call
	mem      memoryTier
}

// blob is one blob on disk. A pinned blob (pins > 0) is not in the LRU list.
type blob struct {
	digest  string
	size    int64
	pins    int
	touched time.Time     // its mtime as last written
	elem    *list.Element // in Store.lru (memory: Store.mem.lru) while unpinned
	// inMemory: the blob is data, in memory only (memory.go).
	inMemory bool
	data     []byte
}

// call is a download in flight; err is set before done closes.
type call struct {
	done      chan struct{}
	err       error
	abandoned bool // the downloader's context ended: a waiter should try again
}

// Open opens the store in cfg.Dir: it drops unfinished downloads, indexes
// the blobs on disk by their last use and evicts down to the bound. Only one
// process may have a directory open at a time.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("local blob store: no directory given")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = DefaultMemoryBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local blob store: %w", err)
	}
	lock, err := lockDir(filepath.Join(cfg.Dir, "lock"))
	if err != nil {
		return nil, fmt.Errorf("local blob store %s: %w", cfg.Dir, err)
	}
	s := &Store{
		dir: cfg.Dir, max: cfg.MaxBytes, log: cfg.Logger, lock: lock,
		blobs: map[string]*blob{}, inflight: map[string]*call{},
		mem: memoryTier{max: cfg.MemoryBytes},
	}
	if err := s.load(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("local blob store %s: %w", cfg.Dir, err)
	}
	return s, nil
}

// Close syncs the store, marks it clean (the next Open need not check its
// small blobs) and releases the directory for another process. The store
// must not be used after Close.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = errors.Join(s.markClean(), s.lock.Close()) })
	return s.closeErr
}

func (s *Store) tmpDir() string  { return filepath.Join(s.dir, "tmp") }
func (s *Store) blobDir() string { return filepath.Join(s.dir, "sha256") }

// path is where the blob with digest "sha256:<hex>" lives.
func (s *Store) path(digest string) string {
	return filepath.Join(s.blobDir(), strings.TrimPrefix(digest, "sha256:"))
}

// load rebuilds the index from the directory.
func (s *Store) load() error {
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		return fmt.Errorf("drop unfinished downloads: %w", err)
	}
	for _, d := range []string{s.tmpDir(), s.blobDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(s.blobDir())
	if err != nil {
		return err
	}
	var found []*blob
	for _, de := range entries {
		if !de.Type().IsRegular() || !hexName.MatchString(de.Name()) {
			continue
		}
		info, err := de.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		found = append(found, &blob{digest: "sha256:" + de.Name(), size: info.Size(), touched: info.ModTime()})
	}
	clean, err := s.startDirty()
	if err != nil {
		return err
	}
	if !clean {
		if found, err = s.verifySmall(found); err != nil {
			return err
		}
	}
	sort.Slice(found, func(i, j int) bool {
		if !found[i].touched.Equal(found[j].touched) {
			return found[i].touched.Before(found[j].touched)
		}
		return found[i].digest < found[j].digest
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range found {
		s.blobs[e.digest] = e
		e.elem = s.lru.PushFront(e)
		s.size += e.size
	}
	s.evictLocked()
	return nil
}

// Ensure makes every blob local, fetching only the missing ones, each once
// even when concurrent calls ask for it. Every blob is verified against its
// digest (and size, if known) while it is written; a mismatch stores nothing
// and fails the call. The blobs stay pinned (not evicted) until the returned
// Pin is released. On error nothing stays pinned.
func (s *Store) Ensure(ctx context.Context, blobs []Blob, fetch FetchFunc) (*Pin, Stats, error) {
	seen := make(map[string]bool, len(blobs))
	uniq := make([]Blob, 0, len(blobs))
	for _, b := range blobs {
		if !cas.ValidDigest(b.Digest) {
			return nil, Stats{}, fmt.Errorf("%w: %q", cas.ErrBadDigest, b.Digest)
		}
		if !seen[b.Digest] {
			seen[b.Digest] = true
			uniq = append(uniq, b)
		}
	}

	pin := &Pin{s: s}
	var (
		st      Stats
		missing []Blob
		touch   []string
		bad     error
		now     = time.Now()
	)
	s.mu.Lock()
	for _, b := range uniq {
		e, ok := s.blobs[b.Digest]
		if !ok {
			missing = append(missing, b)
			continue
		}
		if bad = e.matches(b); bad != nil {
			break
		}
		s.pinLocked(e)
		pin.blobs = append(pin.blobs, e)
		st.Local++
		st.LocalBytes += e.size
		if now.Sub(e.touched) > touchEvery {
			e.touched = now
			if !e.inMemory {
				touch = append(touch, e.digest)
			}
		}
	}
	s.mu.Unlock()
	if bad != nil {
		pin.Release()
		return nil, Stats{}, bad
	}
	s.touch(touch, now)

	var mu sync.Mutex // guards pin.blobs and st below
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchConcurrency)
	large := make(chan struct{}, largeFetchConcurrency)
	for _, b := range missing {
		g.Go(func() error {
			if b.Size < 0 || b.Size > UnsyncedMaxBytes {
				select {
				case large <- struct{}{}:
					defer func() { <-large }()
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			e, fetched, err := s.ensureOne(gctx, b, fetch)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			pin.blobs = append(pin.blobs, e)
			if fetched {
				st.Fetched++
				st.FetchedBytes += e.size
			} else {
				st.Local++
				st.LocalBytes += e.size
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		pin.Release()
		return nil, Stats{}, err
	}
	return pin, st, nil
}

// ensureOne returns b pinned, downloading it unless it is on disk or a
// download of it is in flight; fetched says whether this call downloaded it.
func (s *Store) ensureOne(ctx context.Context, b Blob, fetch FetchFunc) (e *blob, fetched bool, err error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		s.mu.Lock()
		if e, ok := s.blobs[b.Digest]; ok {
			if err := e.matches(b); err != nil {
				s.mu.Unlock()
				return nil, false, err
			}
			s.pinLocked(e)
			s.mu.Unlock()
			return e, false, nil
		}
		if c, ok := s.inflight[b.Digest]; ok {
			s.mu.Unlock()
			if s.onWait != nil {
				s.onWait(b.Digest)
			}
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			if c.err != nil && !c.abandoned {
				return nil, false, c.err
			}
			continue // on disk now, or its downloader gave up: look again
		}
		c := &call{done: make(chan struct{})}
		s.inflight[b.Digest] = c
		s.mu.Unlock()

		size, data, err := s.download(ctx, b, fetch)

		s.mu.Lock()
		delete(s.inflight, b.Digest)
		if err == nil {
			e = &blob{digest: b.Digest, size: size, pins: 1, touched: time.Now(), inMemory: data != nil, data: data}
			s.blobs[b.Digest] = e
			if !e.inMemory {
				s.size += size
				s.evictLocked()
			}
		}
		c.err, c.abandoned = err, ctx.Err() != nil
		close(c.done)
		s.mu.Unlock()
		return e, err == nil, err
	}
}

// download fetches b into the blob directory: written to a temporary file
// while hashed, kept only if it matches its digest and size. A small blob
// may stay in memory instead: its bytes are returned, with memory
// reserved for them.
func (s *Store) download(ctx context.Context, b Blob, fetch FetchFunc) (int64, []byte, error) {
	r, err := fetch(ctx, b.Digest)
	if err != nil {
		return 0, nil, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	defer r.Close()
	if b.Size >= 0 && b.Size <= UnsyncedMaxBytes {
		return s.downloadSmall(b, r)
	}
	n, err := s.downloadFile(b, r)
	return n, nil, err
}

// downloadFile writes a blob to a temporary file while hashing it and
// renames it in if it matches its digest and size.
func (s *Store) downloadFile(b Blob, r io.Reader) (int64, error) {
	tmp, err := os.CreateTemp(s.tmpDir(), "blob-*")
	if err != nil {
		return 0, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	kept := false
	defer func() {
		if !kept {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	src := r
	if b.Size >= 0 {
		src = io.LimitReader(r, b.Size+1) // one byte more tells a longer blob
	}
	h := sha256.New()
	n, err := io.Copy(tmp, io.TeeReader(src, h))
	if err != nil {
		return 0, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != b.Digest || (b.Size >= 0 && n != b.Size) {
		return 0, fmt.Errorf("fetch blob %s: %w: asked for %d bytes, received %d bytes with digest %s",
			b.Digest, cas.ErrDigestMismatch, b.Size, n, got)
	}
	// Synced before the rename, so a crash cannot leave a torn file under
	// a name that vouches for its content; small blobs are checked after a
	// crash instead (durability.go).
	if n > UnsyncedMaxBytes {
		if err := s.synced.sync(tmp); err != nil {
			return 0, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	if err := os.Rename(tmp.Name(), s.path(b.Digest)); err != nil {
		return 0, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	kept = true
	return n, nil
}

// matches checks that a blob asked for with a size has that size.
func (e *blob) matches(b Blob) error {
	if b.Size >= 0 && b.Size != e.size {
		return fmt.Errorf("%w: blob %s is %d bytes, asked for %d bytes", cas.ErrDigestMismatch, b.Digest, e.size, b.Size)
	}
	return nil
}

// touch records a use of the blobs in their mtimes, for the LRU order after
// a restart. Failures only cost that order, so they are ignored.
func (s *Store) touch(digests []string, now time.Time) {
	for _, d := range digests {
		_ = os.Chtimes(s.path(d), now, now)
	}
}

// lruOf is the LRU list e is on while unpinned.
func (s *Store) lruOf(e *blob) *list.List {
	if e.inMemory {
		return &s.mem.lru
	}
	return &s.lru
}

// pinLocked takes e off its LRU list. Lock must be held.
func (s *Store) pinLocked(e *blob) {
	if e.pins == 0 {
		s.lruOf(e).Remove(e.elem)
		e.elem = nil
	}
	e.pins++
}

// unpinLocked puts e back on its LRU list, as just used, once its last
// pin goes. Lock must be held.
func (s *Store) unpinLocked(e *blob) {
	e.pins--
	if e.pins == 0 {
		e.elem = s.lruOf(e).PushFront(e)
	}
}

// evictLocked deletes least recently used unpinned blobs until the store
// is within its bound or only pinned blobs are left. Lock must be held.
func (s *Store) evictLocked() {
	for s.size > s.max {
		back := s.lru.Back()
		if back == nil {
			return
		}
		e := s.lru.Remove(back).(*blob)
		delete(s.blobs, e.digest)
		s.size -= e.size
		if err := os.Remove(s.path(e.digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("local blob store: delete evicted blob", "digest", e.digest, "err", err)
			continue
		}
		s.log.Debug("local blob store: evicted blob", "digest", e.digest, "size", e.size)
	}
}

// Open opens a blob for reading. The caller should hold a Pin on it; an
// open blob stays readable even if it is evicted meanwhile.
func (s *Store) Open(digest string) (io.ReadCloser, error) {
	s.mu.Lock()
	e, ok := s.blobs[digest]
	if ok && e.pins == 0 {
		s.lruOf(e).MoveToFront(e.elem)
	}
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, digest)
	}
	if e.inMemory {
		return io.NopCloser(bytes.NewReader(e.data)), nil // never changed once set
	}
	f, err := os.Open(s.path(digest))
	if err != nil {
		return nil, fmt.Errorf("open local blob %s: %w", digest, err)
	}
	return f, nil
}

// Has reports whether the blob is in the store.
func (s *Store) Has(digest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blobs[digest]
	return ok
}

// Usage returns how many blobs the store holds and their total size, in
// memory and on disk.
func (s *Store) Usage() (blobs int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.blobs), s.size + s.mem.size
}
