package cas

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Small blobs skip the object store's streaming Get, which costs an
// ordered consumer per blob: the many one-line files of a context would pay
// those round trips thousands of times. A small blob is one chunk of the
// object store (PutBatch writes them), read with one direct message get
// and verified against its digest.

// CheckDigest returns an error wrapping ErrDigestMismatch unless data
// hashes to digest.
func CheckDigest(digest string, data []byte) error {
	if got := sumOf(data); got != digest {
		return fmt.Errorf("%w: sent as %s, received %s (%d bytes)", ErrDigestMismatch, digest, got, len(data))
	}
	return nil
}

func sumOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// getSmall reads a stored blob of at most SmallBlobBytes kept in one chunk
// with one direct get of that chunk, and checks it against its digest. It
// returns ok false, and no error, for a blob it cannot read that way.
func (s *Store) getSmall(ctx context.Context, digest string) (data []byte, ok bool, err error) {
	if s.stream == nil {
		return nil, false, nil
	}
	// A blob PutBatch stored has its chunk on a subject named by its
	// digest: one get, and the digest vouches for what it returns.
	if msg, err := s.stream.GetLastMsgForSubject(ctx, chunkSubject(strings.TrimPrefix(digest, "sha256:"))); err == nil && sumOf(msg.Data) == digest {
		data = msg.Data
		s.remember(digest, int64(len(data)))
		s.small.AddCost(digest, data, int64(len(data))+1)
		return data, true, nil
	}
	info, err := s.obj.GetInfo(ctx, digest)
	if err != nil {
		return nil, false, fmt.Errorf("read blob %s: %w", digest, err)
	}
	if info.Deleted {
		return nil, false, fmt.Errorf("read blob %s: %w", digest, jetstream.ErrObjectNotFound)
	}
	if info.Size > SmallBlobBytes || info.Chunks > 1 {
		return nil, false, nil
	}
	if info.Size > 0 {
		msg, err := s.stream.GetLastMsgForSubject(ctx, chunkSubject(info.NUID))
		if err != nil {
			return nil, false, fmt.Errorf("read blob %s: %w", digest, err)
		}
		data = msg.Data
	}
	if got := sumOf(data); got != digest || uint64(len(data)) != info.Size {
		return nil, false, fmt.Errorf("read blob %s: %w: read %d bytes with digest %s", digest, ErrDigestMismatch, len(data), got)
	}
	s.remember(digest, int64(len(data)))
	s.small.AddCost(digest, data, int64(len(data))+1)
	return data, true, nil
}

// readSmall is Get's path for small blobs.
func (s *Store) readSmall(ctx context.Context, digest string) (io.ReadCloser, bool, error) {
	data, ok, err := s.getSmall(ctx, digest)
	if err != nil || !ok {
		return nil, ok, err
	}
	return io.NopCloser(bytes.NewReader(data)), true, nil
}
