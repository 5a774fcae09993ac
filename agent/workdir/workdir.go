package workdir

import (
	"errors"
	"io"
	"log/slog"
	"sync"
)

// DefaultMaxBytes bounds a store opened without a bound: 10 GiB of files.
const DefaultMaxBytes int64 = 10 << 30

// ErrBlobMismatch: a blob's content is not what its context entry names
// (size or sha256 digest).
var ErrBlobMismatch = errors.New("blob content differs from its context entry")

// ErrNotDirectory: a path that must be a directory of the context is
// something else on disk (a symlink, a file), so nothing is written through
// it.
var ErrNotDirectory = errors.New("is not a directory on disk: refusing to write through it")

// Opener opens a blob by digest ("sha256:<64 hex>"); *localcas.Store is
// one. Materialize checks every blob it reads against its entry's size and
// digest, and opens several at once (it writes files in parallel).
type Opener interface {
	Open(digest string) (io.ReadCloser, error)
}

// Config opens a Store.
type Config struct {
	// Dir holds the context directories; it is created (0700) if missing.
	// Only one process may have it open at a time.
	Dir string
	// MaxBytes bounds the file bytes of all context directories; 0 means
	// DefaultMaxBytes. Pinned directories may take the store over its bound
	// until they are released.
	MaxBytes int64
	// Logger receives evictions and failures to delete; nil discards them.
	Logger *slog.Logger
}

// Stats says what one Materialize did to its directory. Every entry of the
// context (with the directories its paths imply) is counted once as Written
// or Kept, so Written+Kept is the number of entries.
type Stats struct {
	// Written counts entries created or rewritten, and directories whose
	// mode or mtime changed (a directory is never recreated for that).
	Written int
	// Kept counts entries left as they were on disk.
	Kept int
	// Removed counts entries of the directory's previous context that are
	// not in this one and were deleted. A type change (file to directory…)
	// counts as Written, not Removed.
	Removed int
	// WrittenBytes is the file content written.
	WrittenBytes int64
	// TotalBytes is the size of the context's files.
	TotalBytes int64
	// Fresh: the directory started from empty because it was new, or had no
	// readable record of its content (a crash or failure interrupted an
	// earlier Materialize); every entry was written.
	Fresh bool
	// Evicted counts the least recently used directories this call deleted
	// to bring the store within its bound.
	Evicted int
	// OverBound: the store is still over its bound after eviction, because
	// the pinned directories (this one included) hold more than the bound.
	OverBound bool
}

// Dir is a materialized build context, pinned until Release: the store
// neither modifies nor evicts it meanwhile.
type Dir struct {
	path, slot string
	release    func()
	once       sync.Once
}

// Path is the absolute directory that holds the context.
func (d *Dir) Path() string { return d.path }

// Slot names the directory: "<first 16 hex digits of sha256(key)>-<n>",
// the same for the same key and slot number across restarts. It suits as
// the BuildKit session's shared key, since the engine's copy of the context
// then follows this directory.
func (d *Dir) Slot() string { return d.slot }

// Release unpins the directory, which may then be rewritten by a later
// Materialize of its key or evicted. It may be called more than once, and
// on a nil Dir.
func (d *Dir) Release() {
	if d == nil {
		return
	}
	d.once.Do(d.release)
}
