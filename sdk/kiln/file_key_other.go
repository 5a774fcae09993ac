//go:build !unix

package kiln

import "io/fs"

// addSysKey adds nothing where there is no inode: size and mtime identify
// the file.
func addSysKey(*fileKey, fs.FileInfo) {}
