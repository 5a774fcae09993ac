package workdir

import "golang.org/x/sys/unix"

// syncFS writes to disk what was written to the filesystem holding fd:
// one call rather than an fsync per file of a context.
func syncFS(fd int) error { return unix.Syncfs(fd) }
