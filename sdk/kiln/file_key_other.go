//go:build !unix

package kiln

import "io/fs"

// addSysKey adds nothing where there is no inode: size and mtime identify
// the file.
func addSysKey(*fileKey, fs.FileInfo) {}

// linkCount is 1 where there is no inode: hard links are sent as files.
func linkCount(fs.FileInfo) uint64 { return 1 }
