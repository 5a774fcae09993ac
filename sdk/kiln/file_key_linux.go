package kiln

import (
	"io/fs"
	"syscall"
)

// addSysKey adds the inode, device and ctime to k.
func addSysKey(k *fileKey, info fs.FileInfo) {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		k.ino = uint64(st.Ino) // the field types differ between architectures
		k.dev = uint64(st.Dev)
		k.ctime = st.Ctim.Nano()
	}
}

// linkCount is the number of hard links to the file info describes.
func linkCount(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink) // the field type differs between architectures
	}
	return 1
}
