package kiln

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Small files travel in batches (BatchUpdateBlobs, REAPI's model): a
// context of thousands of one-line files costs a few round trips, not one
// per file. Larger files keep their own chunked blob on UploadBlobs.
const (
	// BatchBlobMaxBytes is the largest blob sent in a batch.
	BatchBlobMaxBytes = 64 << 10
	// batchBytes and batchBlobs bound one batch (the gateway takes up to
	// 4 MiB and 10 000 blobs).
	batchBytes = 1 << 20
	batchBlobs = 2000
	// batchesInFlight bounds the batches sent at once.
	batchesInFlight = 4
)

// splitBatches returns the blobs that go in batches, grouped, and the rest.
func splitBatches(blobs []*kilnv1.ContextEntry) (batches [][]*kilnv1.ContextEntry, large []*kilnv1.ContextEntry) {
	var cur []*kilnv1.ContextEntry
	var curBytes int64
	for _, e := range blobs {
		size := e.Digest.GetSizeBytes()
		if size > BatchBlobMaxBytes {
			large = append(large, e)
			continue
		}
		if len(cur) > 0 && (curBytes+size > batchBytes || len(cur) == batchBlobs) {
			batches = append(batches, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, e)
		curBytes += size
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return batches, large
}

// uploadBatches sends the batches, batchesInFlight at once. It returns
// errBatchesUnsupported, having sent nothing, when the gateway predates
// BatchUpdateBlobs.
func (c *Client) uploadBatches(ctx context.Context, root string, batches [][]*kilnv1.ContextEntry, rep *progressReporter) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(batchesInFlight)
	for _, batch := range batches {
		eg.Go(func() error { return c.uploadBatch(ectx, root, batch, rep) })
	}
	return eg.Wait()
}

// errBatchesUnsupported: the gateway has no BatchUpdateBlobs.
var errBatchesUnsupported = errors.New("the gateway does not take batches of blobs")

// uploadBatch reads the batch's files, checks each against its manifest
// digest (a file that changed since PackContext is a *FileChangedError and
// nothing of it is sent) and sends them in one BatchUpdateBlobs call.
func (c *Client) uploadBatch(ctx context.Context, root string, batch []*kilnv1.ContextEntry, rep *progressReporter) error {
	req := &kilnv1.BatchUpdateBlobsRequest{Blobs: make([]*kilnv1.BatchUpdateBlobsRequest_Blob, 0, len(batch))}
	var bytes int64
	for _, e := range batch {
		data, err := readBlob(root, e)
		if err != nil {
			return err
		}
		bytes += int64(len(data))
		req.Blobs = append(req.Blobs, &kilnv1.BatchUpdateBlobsRequest_Blob{Digest: e.Digest, Data: data, Path: e.Path})
	}
	resp, err := c.contexts.BatchUpdateBlobs(ctx, req)
	if status.Code(err) == codes.Unimplemented {
		return errBatchesUnsupported
	}
	if err != nil {
		return err
	}
	stored := make(map[string]bool, len(resp.GetStored()))
	for _, d := range resp.GetStored() {
		stored[d.GetHash()] = true
	}
	for _, e := range batch {
		if !stored[e.Digest.GetHash()] {
			return status.Errorf(codes.Internal, "the gateway did not confirm storing blob %s (%s)", e.Digest.GetHash(), e.Path)
		}
	}
	rep.add(len(batch), bytes)
	return nil
}

// readBlob reads the file of entry e whole and checks it still has the
// manifest's size and digest.
func readBlob(root string, e *kilnv1.ContextEntry) ([]byte, error) {
	abs := filepath.Join(root, filepath.FromSlash(e.Path))
	changed := &FileChangedError{Path: abs, While: "uploading"}
	f, err := openBlob(abs, e)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, changed
	}
	if err != nil {
		return nil, fmt.Errorf("reading %q: %w", e.Path, err)
	}
	defer f.Close()
	size := e.Digest.GetSizeBytes()
	data, err := io.ReadAll(io.LimitReader(f, size+1)) // one byte more tells a file that grew
	if err != nil {
		return nil, fmt.Errorf("reading %q: %w", e.Path, err)
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != size || digestString(sum[:]) != e.Digest.GetHash() {
		return nil, changed
	}
	return data, nil
}
