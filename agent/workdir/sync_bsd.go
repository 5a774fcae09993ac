//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package workdir

import "golang.org/x/sys/unix"

// syncFS writes to disk what was written to the filesystems: these
// systems have no syncfs, so it is sync.
func syncFS(int) error { return unix.Sync() }
