package localcas

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the file system holding f (and so f).
func syncFS(f *os.File) error { return unix.Syncfs(int(f.Fd())) }
