package gateway

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/cas"
)

// Bounds of one BatchUpdateBlobs call. Blobs larger than a client's batch
// threshold go through UploadBlobs, chunked.
const (
	// MaxBatchBytes bounds the blob bytes of one batch.
	MaxBatchBytes = 4 << 20
	// MaxBatchBlobs bounds the blobs of one batch.
	MaxBatchBlobs = 10000
)

// BatchUpdateBlobs stores a batch of small blobs, all or nothing: each is
// checked against its digest before any is stored, the blobs the farm
// lacks are charged to the caller's tenant in one charge (refused over its
// quota before anything is stored), and stored in JetStream atomic
// batches (cas.PutBatch: one synced write per batch, not two per blob);
// what could not be stored is refunded and the call fails, so the client
// sends the batch again (blobs stored meanwhile are then accepted without
// a charge).
func (g *Gateway) BatchUpdateBlobs(ctx context.Context, req *kilnv1.BatchUpdateBlobsRequest) (*kilnv1.BatchUpdateBlobsResponse, error) {
	tenant := tenantOf(ctx)
	if n := len(req.GetBlobs()); n > MaxBatchBlobs {
		uploadBlobsRefused.Add(float64(n))
		return nil, status.Errorf(codes.ResourceExhausted, "batch of %d blobs, over the limit of %d blobs", n, MaxBatchBlobs)
	}
	var total int64
	seen := make(map[string]bool, len(req.GetBlobs()))
	var blobs []*kilnv1.BatchUpdateBlobsRequest_Blob // distinct
	for _, b := range req.GetBlobs() {
		d := b.GetDigest()
		if !cas.ValidDigest(d.GetHash()) {
			uploadBlobsRefused.Inc()
			return nil, invalid("blob %q: digest %q is not of the form sha256:<64 hex digits>", b.GetPath(), d.GetHash())
		}
		if len(b.GetData()) > cas.BatchItemMaxBytes {
			uploadBlobsRefused.Inc()
			return nil, invalid("blob %q (%s) is %d bytes, over the %d bytes of a batched blob: send it with UploadBlobs", b.GetPath(), d.GetHash(), len(b.GetData()), cas.BatchItemMaxBytes)
		}
		if d.GetSizeBytes() != int64(len(b.GetData())) {
			uploadBlobsRefused.Inc()
			return nil, invalid("blob %q (%s): declared %d bytes, sent %d bytes", b.GetPath(), d.GetHash(), d.GetSizeBytes(), len(b.GetData()))
		}
		total += d.GetSizeBytes()
		if total > MaxBatchBytes {
			uploadBlobsRefused.Inc()
			return nil, status.Errorf(codes.ResourceExhausted, "batch is over %d bytes: send larger blobs with UploadBlobs", MaxBatchBytes)
		}
		if !seen[d.GetHash()] {
			seen[d.GetHash()] = true
			blobs = append(blobs, b)
		}
	}
	// Every blob is verified before any is stored: a batch with one bad
	// blob stores nothing.
	for _, b := range blobs {
		if err := cas.CheckDigest(b.GetDigest().GetHash(), b.GetData()); err != nil {
			uploadBlobsRefused.Inc()
			return nil, invalid("blob %q (%s): %v", b.GetPath(), b.GetDigest().GetHash(), err)
		}
	}
	uploadBytesReceived.Add(float64(total))

	lacking, err := g.lackingBlobs(ctx, blobs)
	if err != nil {
		return nil, err
	}
	var need int64
	for _, b := range lacking {
		need += b.GetDigest().GetSizeBytes()
	}
	if need > 0 {
		if err := g.charge(ctx, tenant, need); err != nil {
			uploadBlobsRefused.Add(float64(len(lacking)))
			return nil, err
		}
	}
	items := make([]cas.Item, len(lacking))
	for i, b := range lacking {
		items[i] = cas.Item{Digest: b.GetDigest().GetHash(), Data: b.GetData()}
	}
	if err := g.blobs.PutBatch(ctx, items, cas.Meta{Owner: tenant}); err != nil {
		g.refundUnstored(ctx, tenant, lacking)
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.Unavailable, "storing a batch of %d blobs: %v", len(items), err)
	}
	uploadBlobsStored.Add(float64(len(lacking)))
	resp := &kilnv1.BatchUpdateBlobsResponse{}
	for _, b := range blobs {
		resp.Stored = append(resp.Stored, b.GetDigest())
	}
	return resp, nil
}

// refundUnstored refunds tenant for the blobs of a failed batch that the
// CAS does not hold (a failed batch may have stored some).
func (g *Gateway) refundUnstored(ctx context.Context, tenant string, blobs []*kilnv1.BatchUpdateBlobsRequest_Blob) {
	ctx = context.WithoutCancel(ctx)
	still, err := g.lackingBlobs(ctx, blobs)
	if err != nil {
		still = blobs // unknown: refund all, never charge twice for a retried batch
	}
	var n int64
	for _, b := range still {
		n += b.GetDigest().GetSizeBytes()
	}
	if n > 0 {
		g.refund(ctx, tenant, n)
	}
}

// lackingBlobs returns the blobs the CAS does not hold.
func (g *Gateway) lackingBlobs(ctx context.Context, blobs []*kilnv1.BatchUpdateBlobsRequest_Blob) ([]*kilnv1.BatchUpdateBlobsRequest_Blob, error) {
	ds := make([]*kilnv1.Digest, len(blobs))
	for i, b := range blobs {
		ds[i] = b.GetDigest()
	}
	have, err := g.hasMany(ctx, ds)
	if err != nil {
		return nil, err
	}
	var out []*kilnv1.BatchUpdateBlobsRequest_Blob
	for i, b := range blobs {
		if !have[i] {
			out = append(out, b)
		}
	}
	return out, nil
}
