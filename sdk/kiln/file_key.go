package kiln

import (
	"io/fs"
	"time"
)

// timestampGranularity is the coarsest mtime/ctime resolution kiln expects
// of a filesystem (FAT's 2s). A file whose times are within it of a run's
// start may change again without its times moving, so the stat cache does
// not trust it yet.
const timestampGranularity = 2 * time.Second

// fileKey is a file's stat identity: while it stays the same, the file's
// content is taken to be the same (as git's index and BuildKit's fsutil do).
type fileKey struct {
	size int64
	// mtime and ctime are in nanoseconds since the epoch; ctime is 0 where
	// the platform does not report it.
	mtime int64
	ctime int64
	ino   uint64
	dev   uint64
}

func keyOf(info fs.FileInfo) fileKey {
	k := fileKey{size: info.Size(), mtime: info.ModTime().UnixNano()}
	addSysKey(&k, info)
	return k
}
