// Package cas is the farm's content-addressed blob store, kept in the NATS
// JetStream object store KILN_CAS so every gateway and agent sees the same
// blobs. Blobs are named by their digest ("sha256:<hex>"); a blob is stored
// only after its bytes were verified against that digest.
package cas

import (
	"bytes"
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
	"github.com/kilnbuild/kiln/services/lru"
)

// ErrDigestMismatch: the bytes do not hash to the digest they were sent as.
var ErrDigestMismatch = errors.New("blob content does not match its digest")

// ErrBadDigest: a digest is not of the form sha256:<64 hex>.
var ErrBadDigest = errors.New("malformed digest")

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDigest reports whether d has the form "sha256:<64 lower-case hex>".
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// Store reads and writes blobs. Blobs are immutable and never deleted, so
// the Store remembers which blobs it has seen stored (Has answers from
// memory) and keeps small blobs (manifests, Dockerfiles) in memory, both
// bounded: a gateway checking a context it has checked before makes no
// round trips to NATS.
type Store struct {
	obj     jetstream.ObjectStore
	present *lru.Cache[string, int64]  // digest → size, stored for sure
	small   *lru.Cache[string, []byte] // contents of blobs up to SmallBlobBytes
}

const (
	// SmallBlobBytes is the largest blob whose contents the Store keeps.
	SmallBlobBytes  = 256 << 10
	smallCacheBytes = 32 << 20
	presentEntries  = 1 << 17 // ~210 bytes each: under 32 MiB
	// defaultChunkBytes is the object store's default chunk size.
	defaultChunkBytes = 128 << 10
)

// Open binds to the KILN_CAS object store (created by bus.Setup).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	obj, err := js.ObjectStore(ctx, bus.BucketCAS)
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", bus.BucketCAS, err)
	}
	return &Store{
		obj:     obj,
		present: lru.New[string, int64](presentEntries),
		small:   lru.New[string, []byte](smallCacheBytes),
	}, nil
}

// Has reports whether the blob is stored with the given size.
func (s *Store) Has(ctx context.Context, digest string, size int64) (bool, error) {
	if !ValidDigest(digest) {
		return false, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	if n, ok := s.present.Get(digest); ok {
		return size < 0 || n == size, nil
	}
	info, err := s.obj.GetInfo(ctx, digest)
	if err != nil {
		if bus.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up blob %s: %w", digest, err)
	}
	if info.Deleted {
		return false, nil
	}
	s.present.Add(digest, int64(info.Size))
	return size < 0 || int64(info.Size) == size, nil
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
	var head bytes.Buffer // the contents, while the blob is small
	n, err := io.Copy(io.MultiWriter(tmp, h, &capped{&head, SmallBlobBytes}), r)
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
	meta := jetstream.ObjectMeta{Name: digest}
	if n < defaultChunkBytes { // the store allocates one chunk buffer per Put
		meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(max(n, 1))}
	}
	if _, err := s.obj.Put(ctx, meta, tmp); err != nil {
		return fmt.Errorf("store blob %s: %w", digest, err)
	}
	s.present.Add(digest, n)
	if n <= SmallBlobBytes {
		s.small.AddCost(digest, head.Bytes(), n+1)
	}
	return nil
}

// capped writes into buf until it would exceed max bytes, then drops the
// rest (and what it had): the blob is too big to keep in memory.
type capped struct {
	buf *bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if c.buf.Len()+len(p) > c.max {
		c.max = -1 // stays over for good
		c.buf.Reset()
	}
	if c.max >= 0 {
		c.buf.Write(p)
	}
	return len(p), nil
}

// Get opens a stored blob; the caller closes it.
func (s *Store) Get(ctx context.Context, digest string) (io.ReadCloser, error) {
	if !ValidDigest(digest) {
		return nil, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	if data, ok := s.small.Get(digest); ok {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	r, err := s.obj.Get(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", digest, err)
	}
	info, err := r.Info()
	if err != nil || info.Size > SmallBlobBytes {
		return r, nil
	}
	defer r.Close()
	data, err := io.ReadAll(r) // the object store checks its own digest at EOF
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", digest, err)
	}
	s.present.Add(digest, int64(len(data)))
	s.small.AddCost(digest, data, int64(len(data))+1)
	return io.NopCloser(bytes.NewReader(data)), nil
}
