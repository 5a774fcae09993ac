//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package workdir

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// Names in the store's directory.
const (
	lockName     = "lock"
	trashName    = "trash"
	recordSuffix = ".record"
	tmpSuffix    = ".tmp"
)

var (
	// slotName matches "<16 hex>-<n>", a context directory.
	slotName = regexp.MustCompile(`^[0-9a-f]{16}-(0|[1-9][0-9]{0,8})$`)

	errClosed = errors.New("context directories: the store is closed")
)

// Store keeps one directory per build-context lineage and slot, each
// holding the last context materialized into it, within a bound on their
// total file bytes. Its methods are safe for concurrent use.
type Store struct {
	root string // absolute
	max  int64
	log  *slog.Logger
	lock *os.File

	// mu guards the fields below. It is held across the renames and
	// record deletions of an eviction, never across writing a context or
	// deleting a directory's content.
	mu     sync.Mutex
	keys   map[string]map[int]*slot // by key hash, then slot number
	size   int64                    // sum of the slots' bytes
	clock  uint64                   // last LRU stamp handed out
	trashN uint64                   // names directories moved to trash/
	closed bool
}

// slot is one context directory, root/<hash>-<n>, with its record
// root/<hash>-<n>.record. A pinned slot belongs to one Materialize, then
// to its Dir, until released; only its owner touches it on disk.
type slot struct {
	hash   string
	n      int
	name   string
	pinned bool
	bytes  int64  // its files' bytes; while pinned, at least what is on disk
	used   uint64 // LRU stamp: higher is more recent
}

// Open opens the store in cfg.Dir. It keeps the context directories a
// previous process left with a valid record, deletes the rest (directories
// a crash or failure left half-written, unfinished records, evicted
// directories not yet deleted), then evicts down to the bound. It fails if
// the filesystem does not keep nanosecond mtimes, on which detecting
// changes depends.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("context directories: no directory given")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	root, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("context directories: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("context directories: %w", err)
	}
	lock, err := lockDir(filepath.Join(root, lockName))
	if err != nil {
		return nil, fmt.Errorf("context directories %s: %w", root, err)
	}
	s := &Store{root: root, max: cfg.MaxBytes, log: cfg.Logger, lock: lock, keys: map[string]map[int]*slot{}}
	if err := s.load(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("context directories %s: %w", root, err)
	}
	return s, nil
}

// Close releases the directory for another process. Release every Dir and
// let every Materialize return first; after Close, Materialize fails and
// Release only unpins.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.lock.Close()
}

// Usage returns how many context directories the store holds and the size
// of their files.
func (s *Store) Usage() (dirs int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, slots := range s.keys {
		dirs += len(slots)
	}
	return dirs, s.size
}

func (s *Store) recordPath(name string) string { return filepath.Join(s.root, name+recordSuffix) }

// load rebuilds the index from the directory.
func (s *Store) load() error {
	rootfd, err := openRoot(s.root)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	if err := removeAt(rootfd, trashName); err != nil {
		return fmt.Errorf("empty %s: %w", trashName, err)
	}
	if err := unix.Mkdirat(rootfd, trashName, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", trashName, err)
	}
	if err := checkNanos(filepath.Join(s.root, trashName)); err != nil {
		return err
	}
	names, err := readNames(s.root)
	if err != nil {
		return err
	}
	var dirs []string
	records := map[string]bool{}
	for _, name := range names {
		switch {
		case slotName.MatchString(name):
			dirs = append(dirs, name)
		case strings.HasSuffix(name, recordSuffix) && slotName.MatchString(strings.TrimSuffix(name, recordSuffix)):
			records[strings.TrimSuffix(name, recordSuffix)] = true
		case strings.HasSuffix(name, recordSuffix+tmpSuffix):
			if err := removeAt(rootfd, name); err != nil {
				return err
			}
		}
	}
	type found struct {
		sl      *slot
		touched time.Time
	}
	var kept []found
	for _, name := range dirs {
		m, touched, err := s.readRecord(name)
		if m == nil {
			s.log.Info("context directories: deleting a directory without a valid record", "dir", name, "err", err)
			if err := os.Remove(s.recordPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if err := removeAt(rootfd, name); err != nil {
				return fmt.Errorf("delete %s: %w", name, err)
			}
			continue
		}
		delete(records, name)
		hash, num, _ := strings.Cut(name, "-")
		n, _ := strconv.Atoi(num) // slotName matched: digits
		kept = append(kept, found{&slot{hash: hash, n: n, name: name, bytes: fileBytes(m)}, touched})
	}
	for name := range records { // a record without its directory
		if err := os.Remove(s.recordPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// The least recently used first, as its record's mtime says.
	slices.SortFunc(kept, func(a, b found) int {
		return cmp.Or(a.touched.Compare(b.touched), strings.Compare(a.sl.name, b.sl.name))
	})
	s.mu.Lock()
	for _, f := range kept {
		f.sl.used = s.tickLocked()
		s.addLocked(f.sl)
	}
	trash := s.evictLocked()
	s.mu.Unlock()
	s.empty(trash)
	return nil
}

// Materialize makes a directory for key hold context m, its files read
// from blobs, and returns it pinned. The directory is the lowest slot of
// key that is not pinned, or a new one. Only the entries that differ from
// what the slot held are written, and the entries m lacks are deleted.
//
// m is checked with ctxmanifest.Validate for safety (paths, types, links)
// but with no size limit: the caller checks the tenant's limits. An unsafe
// manifest is refused before anything is written, with Validate's
// error (matching rules.ErrInvalid) wrapped.
//
// On error the slot is deleted and nothing stays pinned; the Stats say
// what was done before the error.
func (s *Store) Materialize(ctx context.Context, key string, m *kilnv1.ContextManifest, blobs Opener) (*Dir, Stats, error) {
	total, err := ctxmanifest.Validate(m, safetyOnly)
	if err != nil {
		return nil, Stats{}, fmt.Errorf("materialize build context: %w", err)
	}
	want := normalize(m)
	sl, err := s.pin(key)
	if err != nil {
		return nil, Stats{}, err
	}
	st := Stats{TotalBytes: total}
	if err := s.fill(ctx, sl, want, blobs, &st); err != nil {
		s.fail(sl)
		return nil, st, fmt.Errorf("materialize build context in %s: %w", sl.name, err)
	}
	s.mu.Lock()
	s.setBytesLocked(sl, total)
	trash := s.evictLocked()
	st.OverBound = s.size > s.max
	size := s.size
	s.mu.Unlock()
	st.Evicted += s.empty(trash)
	if st.OverBound {
		s.log.Warn("context directories: over their bound, pinned directories hold more",
			"dir", sl.name, "context_bytes", total, "store_bytes", size, "max_bytes", s.max)
	}
	return &Dir{
		path:    filepath.Join(s.root, sl.name),
		slot:    sl.name,
		release: func() { s.release(sl) },
	}, st, nil
}

// fill makes slot sl, pinned by the caller, hold want.
func (s *Store) fill(ctx context.Context, sl *slot, want *kilnv1.ContextManifest, blobs Opener, st *Stats) error {
	old, _, rerr := s.readRecord(sl.name)
	var oldBytes int64
	if old != nil {
		oldBytes = fileBytes(old)
	}
	// Make room before writing.
	s.mu.Lock()
	s.setBytesLocked(sl, max(oldBytes, st.TotalBytes))
	trash := s.evictLocked()
	s.mu.Unlock()
	st.Evicted += s.empty(trash)

	rootfd, err := openRoot(s.root)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	if old == nil {
		// What is on disk is unknown: start from empty.
		if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("context directories: unreadable record, rewriting the directory", "dir", sl.name, "err", rerr)
		}
		st.Fresh = true
		if err := s.dropRecord(rootfd, sl.name); err != nil {
			return err
		}
		if err := removeAt(rootfd, sl.name); err != nil {
			return fmt.Errorf("clear the directory: %w", err)
		}
		if err := unix.Mkdirat(rootfd, sl.name, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
		// Whatever the umask: eviction renames it, which needs it writable.
		if err := unix.Fchmodat(rootfd, sl.name, 0o700, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		old = &kilnv1.ContextManifest{}
	}
	p := diff(old, want)
	if p.unchanged() {
		st.Kept = len(p.entries)
		return nil
	}
	// From here until the new record, no record vouches for the directory.
	if !st.Fresh {
		if err := s.dropRecord(rootfd, sl.name); err != nil {
			return err
		}
	}
	dirfd, err := unix.Openat(rootfd, sl.name, dirFlags, 0)
	if err != nil {
		return fmt.Errorf("open the directory: %w", err)
	}
	defer unix.Close(dirfd)
	if err := apply(ctx, dirfd, p, blobs, st); err != nil {
		return err
	}
	// The record must not reach the disk before what it describes.
	if err := syncFS(dirfd); err != nil {
		return fmt.Errorf("sync the directory: %w", err)
	}
	return s.writeRecord(rootfd, sl.name, want)
}

// fail deletes slot sl, pinned by the caller, after a failed Materialize:
// its content is unknown. If it cannot be deleted it stays, without a
// record, and the next Materialize of it starts from empty.
func (s *Store) fail(sl *slot) {
	err := os.Remove(s.recordPath(sl.name))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err == nil {
		var rootfd int
		if rootfd, err = openRoot(s.root); err == nil {
			err = removeAt(rootfd, sl.name)
			unix.Close(rootfd)
		}
	}
	if err != nil {
		s.log.Warn("context directories: delete a directory after a failure", "dir", sl.name, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sl.pinned = false
	if err == nil {
		s.removeLocked(sl)
		return
	}
	sl.used = s.tickLocked()
}

// release unpins sl and evicts down to the bound.
func (s *Store) release(sl *slot) {
	s.mu.Lock()
	sl.pinned = false
	sl.used = s.tickLocked()
	var trash []string
	if !s.closed {
		// For the LRU order after a restart; losing it costs only that order.
		now := time.Now()
		_ = os.Chtimes(s.recordPath(sl.name), now, now)
		trash = s.evictLocked()
	}
	s.mu.Unlock()
	s.empty(trash)
}

// pin returns the lowest unpinned slot of key, or a new one, pinned.
func (s *Store) pin(key string) (*slot, error) {
	sum := sha256.Sum256([]byte(key))
	hash := hex.EncodeToString(sum[:8])
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	var best *slot
	for _, sl := range s.keys[hash] {
		if !sl.pinned && (best == nil || sl.n < best.n) {
			best = sl
		}
	}
	if best == nil {
		n := 0
		for s.keys[hash][n] != nil {
			n++
		}
		best = &slot{hash: hash, n: n, name: fmt.Sprintf("%s-%d", hash, n)}
		s.addLocked(best)
	}
	best.pinned = true
	best.used = s.tickLocked()
	return best, nil
}

// Lock must be held.
func (s *Store) tickLocked() uint64 {
	s.clock++
	return s.clock
}

// addLocked indexes sl. Lock must be held.
func (s *Store) addLocked(sl *slot) {
	slots := s.keys[sl.hash]
	if slots == nil {
		slots = map[int]*slot{}
		s.keys[sl.hash] = slots
	}
	slots[sl.n] = sl
	s.size += sl.bytes
}

// removeLocked forgets sl. Lock must be held.
func (s *Store) removeLocked(sl *slot) {
	delete(s.keys[sl.hash], sl.n)
	if len(s.keys[sl.hash]) == 0 {
		delete(s.keys, sl.hash)
	}
	s.size -= sl.bytes
}

// Lock must be held.
func (s *Store) setBytesLocked(sl *slot, n int64) {
	s.size += n - sl.bytes
	sl.bytes = n
}

// evictLocked moves least recently used unpinned slots to trash/ until the
// store is within its bound or only pinned slots are left, and returns
// their names there for empty to delete once the lock is released. Lock
// must be held.
func (s *Store) evictLocked() []string {
	if s.size <= s.max {
		return nil
	}
	var idle []*slot
	for _, slots := range s.keys {
		for _, sl := range slots {
			if !sl.pinned {
				idle = append(idle, sl)
			}
		}
	}
	slices.SortFunc(idle, func(a, b *slot) int { return cmp.Compare(a.used, b.used) })
	var trash []string
	for _, sl := range idle {
		if s.size <= s.max {
			break
		}
		// The record goes first: a directory without one is never trusted.
		if err := os.Remove(s.recordPath(sl.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("context directories: evict", "dir", sl.name, "err", err)
			continue
		}
		s.trashN++
		t := fmt.Sprintf("%s.%d", sl.name, s.trashN)
		err := os.Rename(filepath.Join(s.root, sl.name), filepath.Join(s.root, trashName, t))
		switch {
		case err == nil:
			trash = append(trash, t)
		case errors.Is(err, fs.ErrNotExist):
			trash = append(trash, "")
		default:
			// Left without a record: its next Materialize starts from empty.
			s.log.Warn("context directories: evict", "dir", sl.name, "err", err)
			continue
		}
		s.removeLocked(sl)
		s.log.Debug("context directories: evicted", "dir", sl.name, "bytes", sl.bytes)
	}
	return trash
}

// empty deletes evicted directories from trash/ and returns how many
// directories were evicted.
func (s *Store) empty(trash []string) int {
	if len(trash) == 0 {
		return 0
	}
	fd, err := openRoot(filepath.Join(s.root, trashName))
	if err != nil {
		s.log.Warn("context directories: delete evicted directories", "err", err)
		return len(trash)
	}
	defer unix.Close(fd)
	for _, t := range trash {
		if t == "" {
			continue
		}
		if err := removeAt(fd, t); err != nil {
			s.log.Warn("context directories: delete an evicted directory", "dir", t, "err", err)
		}
	}
	return len(trash)
}

// readRecord returns the manifest slot name holds and when the record was
// last touched; nil if it has no valid record.
func (s *Store) readRecord(name string) (*kilnv1.ContextManifest, time.Time, error) {
	data, err := os.ReadFile(s.recordPath(name))
	if err != nil {
		return nil, time.Time{}, err
	}
	info, err := os.Stat(s.recordPath(name))
	if err != nil {
		return nil, time.Time{}, err
	}
	m, err := decodeRecord(data)
	if err != nil {
		return nil, time.Time{}, err
	}
	return m, info.ModTime(), nil
}

// dropRecord deletes the record of slot name, durably, before its
// directory changes.
func (s *Store) dropRecord(rootfd int, name string) error {
	if err := os.Remove(s.recordPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop the record: %w", err)
	}
	if err := unix.Fsync(rootfd); err != nil {
		return fmt.Errorf("drop the record: sync: %w", err)
	}
	return nil
}

// writeRecord records that slot name holds m: written aside, synced, then
// renamed into place.
func (s *Store) writeRecord(rootfd int, name string, m *kilnv1.ContextManifest) error {
	data, err := encodeRecord(m)
	if err != nil {
		return err
	}
	final := s.recordPath(name)
	tmp := final + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write the record: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = unix.Fsync(rootfd)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the record: %w", err)
	}
	return nil
}

// openRoot opens a directory of the store itself (which may be reached
// through a symlink the operator configured).
func openRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// checkNanos fails unless the filesystem of dir keeps an mtime to the
// nanosecond: a changed file that keeps its size and mtime second would
// look unchanged to BuildKit's file sync.
func checkNanos(dir string) error {
	name := filepath.Join(dir, "mtime-probe")
	f, err := os.Create(name)
	if err != nil {
		return fmt.Errorf("probe mtimes: %w", err)
	}
	f.Close()
	defer os.Remove(name)
	const want = 1_700_000_000_123_456_789
	ts := unix.NsecToTimespec(want)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("probe mtimes: %w", err)
	}
	info, err := os.Lstat(name)
	if err != nil {
		return fmt.Errorf("probe mtimes: %w", err)
	}
	if got := info.ModTime().UnixNano(); got != want {
		return fmt.Errorf("the filesystem of %s does not keep mtimes to the nanosecond (set %d ns, read back %d ns): "+
			"BuildKit's file sync would miss changed files there; choose a directory on another filesystem", dir, int64(want), got)
	}
	return nil
}

// lockDir takes an exclusive flock on name, which another process holding
// it makes fail at once. The lock goes with the returned file.
func lockDir(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, errors.New("the directory is locked: another process uses it")
		}
		return nil, err
	}
	return f, nil
}
