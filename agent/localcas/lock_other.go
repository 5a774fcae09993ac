//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package localcas

import "os"

// lockDir opens name without locking it: this platform has no flock, so
// two processes sharing a cache directory are not detected.
func lockDir(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
}
