//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package workdir

import (
	"context"
	"errors"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// errUnsupported: the store writes through *at system calls this platform
// lacks.
var errUnsupported = errors.New("context directories are not supported on this platform")

// Store keeps per-lineage build-context directories; on this platform it
// cannot be opened.
type Store struct{}

// Open fails: the store needs Unix system calls.
func Open(Config) (*Store, error) { return nil, errUnsupported }

// Close does nothing.
func (s *Store) Close() error { return nil }

// Usage reports nothing.
func (s *Store) Usage() (dirs int, bytes int64) { return 0, 0 }

// Materialize fails.
func (s *Store) Materialize(context.Context, string, *kilnv1.ContextManifest, Opener) (*Dir, Stats, error) {
	return nil, Stats{}, errUnsupported
}
