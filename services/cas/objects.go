package cas

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// Object-store metadata keys kiln stores with a blob.
const (
	metaOwner  = "kiln-owner" // the tenant charged for the blob
	metaKind   = "kiln-kind"  // "manifest" for context manifests
	kindManife = "manifest"
)

// Meta is what kiln stores with a blob: who was charged for it and whether
// it is a context manifest (whose entries the collector follows).
type Meta struct {
	// Owner is the tenant charged for the blob; empty: nobody (blobs put by
	// agents' tests, or before quotas existed).
	Owner string
	// Manifest marks a context manifest (kiln.v1.ContextManifest).
	Manifest bool
}

func (m Meta) metadata() map[string]string {
	if m.Owner == "" && !m.Manifest {
		return nil
	}
	md := map[string]string{}
	if m.Owner != "" {
		md[metaOwner] = m.Owner
	}
	if m.Manifest {
		md[metaKind] = kindManife
	}
	return md
}

// Object describes one stored blob, as the collector sees it.
type Object struct {
	Digest string
	Size   int64
	// ModTime is when the blob was stored or last touched (Touch).
	ModTime time.Time
	Meta
}

// List returns every stored blob.
func (s *Store) List(ctx context.Context) ([]Object, error) {
	infos, err := s.obj.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", "blobs", err)
	}
	out := make([]Object, 0, len(infos))
	for _, in := range infos {
		if in.Deleted || !ValidDigest(in.Name) {
			continue
		}
		out = append(out, Object{
			Digest:  in.Name,
			Size:    int64(in.Size),
			ModTime: in.ModTime,
			Meta:    Meta{Owner: in.Metadata[metaOwner], Manifest: in.Metadata[metaKind] == kindManife},
		})
	}
	return out, nil
}

// Touch marks a stored blob as used now (its ModTime), so the collector
// keeps it for another grace period: PutManifest touches a manifest the
// farm already holds, which protects the manifest and its files between
// PutManifest and StartBuild. It reports false when the blob is not stored.
func (s *Store) Touch(ctx context.Context, digest string) (bool, error) {
	if !ValidDigest(digest) {
		return false, fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	info, err := s.obj.GetInfo(ctx, digest)
	if bus.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("touch blob %s: %w", digest, err)
	}
	err = s.obj.UpdateMeta(ctx, digest, info.ObjectMeta)
	if errors.Is(err, jetstream.ErrUpdateMetaDeleted) || bus.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("touch blob %s: %w", digest, err)
	}
	s.remember(digest, int64(info.Size))
	return true, nil
}

// Delete removes a blob and forgets it. Deleting a blob that is gone is
// not an error.
func (s *Store) Delete(ctx context.Context, digest string) error {
	if !ValidDigest(digest) {
		return fmt.Errorf("%w: %q", ErrBadDigest, digest)
	}
	s.Forget(digest)
	if err := s.obj.Delete(ctx, digest); err != nil && !bus.IsNotFound(err) {
		return fmt.Errorf("delete blob %s: %w", digest, err)
	}
	s.Forget(digest)
	return nil
}

// formatBytes writes n bytes for a person: "1.2 GB", "512 B".
func formatBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
