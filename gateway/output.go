package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/lru"
)

// outputChunk is the most data one ReadOutputResponse carries.
const outputChunk = 1 << 20

// outputIndexes holds, by manifest digest, the blobs an output manifest
// lists (digest → size), so that the many ReadOutput calls of one download
// read its manifest once. Manifests are content-addressed: an entry is
// right for every gateway and every build that names it.
var outputIndexes = lru.New[string, map[string]int64](1 << 20)

// ReadOutput streams one blob of a finished build's output from the
// KILN_OUTPUTS object store: the output's manifest or a blob the manifest
// lists, from req.offset on, verifying its sha256 as it goes.
func (g *Gateway) ReadOutput(req *kilnv1.ReadOutputRequest, stream grpc.ServerStreamingServer[kilnv1.ReadOutputResponse]) error {
	ctx := stream.Context()
	b, err := g.readableBuild(ctx, req.GetBuildId())
	if err != nil {
		return err
	}
	out := b.GetResult().GetOutput()
	if b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || out.GetManifest() == nil {
		return status.Errorf(codes.NotFound, "build %s has no output: only a build that succeeded with --output local, tar, oci or docker has one", b.Id)
	}
	d := req.GetDigest()
	if d == nil || !buildctx.ValidDigest(d.Hash) {
		return status.Errorf(codes.InvalidArgument, "digest %q is not sha256:<64 hex digits>", d.GetHash())
	}
	if req.Offset < 0 {
		return status.Errorf(codes.InvalidArgument, "offset %d is negative", req.Offset)
	}
	store, err := g.conn.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		return outputErr(ctx, b.Id, err)
	}
	size, err := g.outputBlobSize(ctx, store, out.Manifest, d.Hash)
	if err != nil {
		return outputErr(ctx, b.Id, err)
	}
	if req.Offset > size {
		return status.Errorf(codes.OutOfRange, "offset %d is past the end of blob %s (%d bytes)", req.Offset, d.Hash, size)
	}
	obj, err := store.Get(ctx, outputObject(d.Hash))
	if err != nil {
		return g.outputReadErr(ctx, store, b.Id, d.Hash, err)
	}
	defer obj.Close()
	h := sha256.New()
	// The bytes before offset are read and hashed, not sent: a resumed
	// download is verified whole.
	if _, err := io.CopyN(h, obj, req.Offset); err != nil {
		return g.outputReadErr(ctx, store, b.Id, d.Hash, err)
	}
	buf := make([]byte, outputChunk)
	for {
		n, err := io.ReadFull(obj, buf)
		if n > 0 {
			h.Write(buf[:n])
			if serr := stream.Send(&kilnv1.ReadOutputResponse{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return g.outputReadErr(ctx, store, b.Id, d.Hash, err)
		}
	}
	return g.checkOutputHash(ctx, b.Id, d.Hash, h)
}

// readableBuild returns the build id names if the caller may read it: its
// tenant's, or any for an admin. Another tenant's build is not found.
func (g *Gateway) readableBuild(ctx context.Context, id string) (*kilnv1.Build, error) {
	if !callerOf(ctx).tenant.Admin {
		return g.getOwned(ctx, id)
	}
	if !buildstore.ValidID(id) {
		return nil, status.Errorf(codes.NotFound, "build %q not found", id)
	}
	b, _, err := g.builds.Get(ctx, id)
	if errors.Is(err, buildstore.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "build %q not found", id)
	}
	return b, err
}

// outputBlobSize returns the size of digest if it is the output's
// manifest or a blob the manifest lists, or NotFound.
func (g *Gateway) outputBlobSize(ctx context.Context, store jetstream.ObjectStore, manifest *kilnv1.Digest, digest string) (int64, error) {
	if digest == manifest.GetHash() {
		return manifest.GetSizeBytes(), nil
	}
	index, ok := outputIndexes.Get(manifest.GetHash())
	if !ok {
		data, err := readOutputManifest(ctx, store, manifest)
		if err != nil {
			return 0, err
		}
		m, err := buildctx.Unmarshal(data)
		if err != nil {
			return 0, fmt.Errorf("output manifest %s: %w", manifest.GetHash(), err)
		}
		index = make(map[string]int64, len(m.Entries))
		for _, e := range m.Entries {
			if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE && e.Digest != nil {
				index[e.Digest.Hash] = e.Digest.SizeBytes
			}
		}
		outputIndexes.AddCost(manifest.GetHash(), index, int64(len(index))+1)
	}
	size, ok := index[digest]
	if !ok {
		return 0, status.Errorf(codes.NotFound, "blob %s is not part of this build's output", digest)
	}
	return size, nil
}

// readOutputManifest reads and verifies an output's manifest blob.
func readOutputManifest(ctx context.Context, store jetstream.ObjectStore, manifest *kilnv1.Digest) ([]byte, error) {
	if manifest.GetSizeBytes() > buildctx.MaxManifestBytes {
		return nil, fmt.Errorf("output manifest %s is %d bytes, over %d", manifest.GetHash(), manifest.GetSizeBytes(), buildctx.MaxManifestBytes)
	}
	obj, err := store.Get(ctx, outputObject(manifest.GetHash()))
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	data, err := io.ReadAll(io.LimitReader(obj, buildctx.MaxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(data); "sha256:"+hex.EncodeToString(sum[:]) != manifest.GetHash() {
		return nil, fmt.Errorf("output manifest %s: %w", manifest.GetHash(), errOutputCorrupt)
	}
	return data, nil
}

var errOutputCorrupt = errors.New("stored bytes do not match the digest")

// outputObject names a blob in KILN_OUTPUTS: "sha256/<hex>".
func outputObject(digest string) string { return strings.Replace(digest, ":", "/", 1) }

// checkOutputHash ends a stream whose bytes did not hash to digest with
// DataLoss, logged: the client must not keep them.
func (g *Gateway) checkOutputHash(ctx context.Context, buildID, digest string, h hash.Hash) error {
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		g.log.ErrorContext(ctx, "output blob does not match its digest", "build_id", buildID, "digest", digest, "got", got)
		return status.Errorf(codes.DataLoss, "output blob %s of build %s is corrupt in the farm's store (its bytes hash to %s): discard what was received", digest, buildID, got)
	}
	return nil
}

// outputReadErr words a failure opening or reading a blob: corrupt or
// incomplete bytes are DataLoss, logged.
func (g *Gateway) outputReadErr(ctx context.Context, store jetstream.ObjectStore, buildID, digest string, err error) error {
	if ctx.Err() == nil && g.outputIncomplete(ctx, store, outputObject(digest)) {
		g.log.ErrorContext(ctx, "output blob is incomplete", "build_id", buildID, "digest", digest, "error", err)
		return status.Errorf(codes.DataLoss, "output blob %s of build %s is incomplete in the farm's store (an upload of it failed half way): discard what was received", digest, buildID)
	}
	if errors.Is(err, jetstream.ErrDigestMismatch) {
		g.log.ErrorContext(ctx, "output blob does not match its digest", "build_id", buildID, "digest", digest, "error", err)
		return status.Errorf(codes.DataLoss, "output blob %s of build %s is corrupt in the farm's store: discard what was received", digest, buildID)
	}
	return outputErr(ctx, buildID, err)
}

// outputIncomplete reports whether the object name holds fewer chunks
// than its meta counts (bus.ObjectIncomplete).
func (g *Gateway) outputIncomplete(ctx context.Context, store jetstream.ObjectStore, name string) bool {
	info, err := store.GetInfo(ctx, name)
	return err == nil && bus.ObjectIncomplete(ctx, g.conn.JS, bus.BucketOutputs, info)
}

// outputErr turns a failure to open a build's output into a status: the
// bucket or object gone (expired) is NotFound.
func outputErr(ctx context.Context, buildID string, err error) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound),
		errors.Is(err, jetstream.ErrObjectNotFound):
		return status.Errorf(codes.NotFound, "output expired: the farm no longer holds build %s's output; build it again", buildID)
	case errors.Is(err, errOutputCorrupt):
		return status.Errorf(codes.DataLoss, "build %s's output manifest is corrupt in the farm's store", buildID)
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Errorf(codes.Unavailable, "reading build %s's output: %v", buildID, err)
}
