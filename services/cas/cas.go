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
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/lru"
)

// ErrDigestMismatch: the bytes do not hash to the digest they were sent as.
var ErrDigestMismatch = errors.New("blob content does not match its digest")

// ErrBadDigest: a digest is not of the form sha256:<64 hex>.
var ErrBadDigest = errors.New("malformed digest")

// ValidDigest reports whether d has the form "sha256:<64 lower-case hex>".
// The rule is the farm's and the SDK's: proto/rules/buildctx.
func ValidDigest(d string) bool { return buildctx.ValidDigest(d) }

// Store reads and writes blobs. Blobs are immutable, so the Store keeps
// small blobs (manifests, Dockerfiles) in memory, and it remembers which
// blobs it has seen stored (Has answers from memory), both bounded: a
// gateway checking a context it has checked before makes no round trips to
// NATS. The garbage collector (services/casgc) deletes blobs unreferenced
// for longer than its grace period, so that memory is bounded in age too
// (RememberFor, below the grace), and Forget drops digests the collector
// announces it deleted.
type Store struct {
	obj         jetstream.ObjectStore
	stream      jetstream.Stream // the object store's, for direct reads of small blobs; nil: none
	js          jetstream.JetStream
	reads       readBatcher                // concurrent Gets of small blobs, batched
	atomic      atomicState                // whether KILN_CAS takes atomic batches
	present     *lru.Cache[string, seen]   // digest → size, stored for sure
	small       *lru.Cache[string, []byte] // contents of blobs up to SmallBlobBytes
	rememberFor time.Duration
	now         func() time.Time
}

// seen is one remembered Has answer: the blob's size and when it was known
// to be stored.
type seen struct {
	size int64
	at   time.Time
}

// Option configures a Store.
type Option func(*Store)

// DefaultRememberFor is how long a Store vouches for a blob it has seen
// stored without asking NATS again: half of the collector's default grace.
const DefaultRememberFor = 30 * time.Minute

// RememberFor bounds how long Has answers from memory; keep it below the
// garbage collector's grace period so no Store vouches for a blob the
// collector may have deleted since. 0 or less: never from memory.
func RememberFor(d time.Duration) Option { return func(s *Store) { s.rememberFor = d } }

// WithClock makes the Store read time from now (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

const (
	// SmallBlobBytes is the largest blob whose contents the Store keeps.
	SmallBlobBytes  = 256 << 10
	smallCacheBytes = 32 << 20
	presentEntries  = 1 << 17 // ~210 bytes each: under 32 MiB
	// defaultChunkBytes is the object store's default chunk size.
	defaultChunkBytes = 128 << 10
)

// Open binds to the KILN_CAS object store (created by bus.Setup).
func Open(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Store, error) {
	obj, err := js.ObjectStore(ctx, bus.BucketCAS)
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", bus.BucketCAS, err)
	}
	s := &Store{
		obj:         obj,
		js:          js,
		present:     lru.New[string, seen](presentEntries),
		small:       lru.New[string, []byte](smallCacheBytes),
		rememberFor: DefaultRememberFor,
		now:         time.Now,
	}
	for _, o := range opts {
		o(s)
	}
	if st, err := js.Stream(ctx, "OBJ_"+bus.BucketCAS); err == nil {
		s.stream = st
	}
	s.reads.s = s
	return s, nil
}

// remember records that digest is stored with size bytes.
func (s *Store) remember(digest string, size int64) {
	if s.rememberFor > 0 {
		s.present.Add(digest, seen{size, s.now()})
	}
}

// Forget drops what the Store remembers of the digests (the collector
// deleted them): the next Has asks NATS.
func (s *Store) Forget(digests ...string) {
	for _, d := range digests {
		s.present.Remove(d)
		s.small.Remove(d)
	}
}

// Has reports whether the blob is stored with the given size.
func (s *Store) Has(ctx context.Context, digest string, size int64) (bool, error) {
	if !ValidDigest(digest) {
		return false, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	if p, ok := s.present.Get(digest); ok && s.now().Sub(p.at) < s.rememberFor {
		return size < 0 || p.size == size, nil
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
	s.remember(digest, int64(info.Size))
	return size < 0 || int64(info.Size) == size, nil
}

// Put stores the blob read from r after checking that r's bytes have the
// given digest and size. It spools to a temporary file first, so a mismatch
// stores nothing and memory stays flat for large blobs.
func (s *Store) Put(ctx context.Context, digest string, size int64, r io.Reader) error {
	return s.PutWith(ctx, digest, size, r, Meta{})
}

// PutWith is Put that stores m with the blob (object-store metadata).
func (s *Store) PutWith(ctx context.Context, digest string, size int64, r io.Reader, m Meta) error {
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
	meta := jetstream.ObjectMeta{Name: digest, Metadata: m.metadata()}
	if n < defaultChunkBytes { // the store allocates one chunk buffer per Put
		meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(max(n, 1))}
	}
	if _, err := s.obj.Put(ctx, meta, tmp); err != nil {
		return fmt.Errorf("store blob %s: %w", digest, err)
	}
	s.remember(digest, n)
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
	if data, ok := s.reads.get(ctx, digest); ok {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	if r, ok, err := s.readSmall(ctx, digest); err != nil || ok {
		return r, err
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
	s.remember(digest, int64(len(data)))
	s.small.AddCost(digest, data, int64(len(data))+1)
	return io.NopCloser(bytes.NewReader(data)), nil
}
