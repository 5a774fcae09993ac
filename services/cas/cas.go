// Package cas is the farm's content-addressed blob store, kept in the NATS
// JetStream object store KILN_CAS so every gateway and agent sees the same
// blobs. Blobs are named by their digest ("sha256:<hex>"); a blob is stored
// only after its bytes were verified against that digest.
package cas

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// ErrDigestMismatch: the bytes do not hash to the digest they were sent as.
var ErrDigestMismatch = errors.New("blob content does not match its digest")

// ErrBadDigest: a digest is not of the form sha256:<64 hex>.
var ErrBadDigest = errors.New("malformed digest")

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDigest reports whether d has the form "sha256:<64 lower-case hex>".
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// Store reads and writes blobs.
type Store struct {
	obj jetstream.ObjectStore
}

// Open binds to the KILN_CAS object store (created by bus.Setup).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	obj, err := js.ObjectStore(ctx, bus.BucketCAS)
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", bus.BucketCAS, err)
	}
	return &Store{obj: obj}, nil
}

// Has reports whether the blob is stored with the given size.
func (s *Store) Has(ctx context.Context, digest string, size int64) (bool, error) {
	if !ValidDigest(digest) {
		return false, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	info, err := s.obj.GetInfo(ctx, digest)
	if err != nil {
		if bus.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up blob %s: %w", digest, err)
	}
	return !info.Deleted && (size < 0 || int64(info.Size) == size), nil
}

// Put stores the blob read from r after checking that r's bytes have the
// given digest and size. It spools to a temporary file first, so a mismatch
// stores nothing and memory stays flat for large blobs.
func (s *Store) Put(ctx context.Context, digest string, size int64, r io.Reader) error {
	if !ValidDigest(digest) {
		return fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	tmp, err := os.CreateTemp("", "kiln-blob-*")
	if err != nil {
		return fmt.Errorf("spool blob %s: %w", digest, err)
	}
	defer func() { tmp.Close(); os.Remove(tmp.Name()) }()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err != nil {
		return fmt.Errorf("receive blob %s: %w", digest, err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != digest || (size >= 0 && n != size) {
		return fmt.Errorf("%w: sent as %s (%d bytes), received %s (%d bytes)", ErrDigestMismatch, digest, size, got, n)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind blob %s: %w", digest, err)
	}
	if _, err := s.obj.Put(ctx, jetstream.ObjectMeta{Name: digest}, tmp); err != nil {
		return fmt.Errorf("store blob %s: %w", digest, err)
	}
	return nil
}

// Get opens a stored blob; the caller closes it.
func (s *Store) Get(ctx context.Context, digest string) (io.ReadCloser, error) {
	if !ValidDigest(digest) {
		return nil, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	r, err := s.obj.Get(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", digest, err)
	}
	return r, nil
}
