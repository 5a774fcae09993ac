package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// FindMissingBlobs returns the digests the farm does not hold.
func (g *Gateway) FindMissingBlobs(ctx context.Context, req *kilnv1.FindMissingBlobsRequest) (*kilnv1.FindMissingBlobsResponse, error) {
	resp := &kilnv1.FindMissingBlobsResponse{}
	for _, d := range req.Digests {
		if !cas.ValidDigest(d.GetHash()) {
			return nil, invalid("digest %q is not of the form sha256:<64 hex digits>", d.GetHash())
		}
	}
	have, err := g.hasMany(ctx, req.Digests)
	if err != nil {
		return nil, err
	}
	for i, d := range req.Digests {
		if !have[i] {
			resp.Missing = append(resp.Missing, d)
		}
	}
	return resp, nil
}

// hasMany reports which of the digests the CAS holds with their sizes.
func (g *Gateway) hasMany(ctx context.Context, ds []*kilnv1.Digest) ([]bool, error) {
	digests := make([]string, len(ds))
	sizes := make([]int64, len(ds))
	for i, d := range ds {
		digests[i], sizes[i] = d.GetHash(), d.GetSizeBytes()
	}
	return g.blobs.HasMany(ctx, digests, sizes)
}

// PutManifest validates a context manifest before any of its blobs is
// accepted, stores it, and says which file blobs are still missing. A
// manifest the farm holds already is touched, which keeps it and its files
// from the garbage collector until the build that follows is queued. The
// caller's tenant is charged for a new manifest, and a request whose new
// manifest and missing files would take the tenant over its CAS quota is
// refused before anything is stored. The request is held within
// --manifest-memory (manifestGate) and encoded entry by entry.
func (g *Gateway) PutManifest(ctx context.Context, req *kilnv1.PutManifestRequest) (*kilnv1.PutManifestResponse, error) {
	n := int64(proto.Size(req)) // walks every entry: once
	manifestBytesReceived.Add(float64(n))
	if limit := g.limits.manifestRequestMax(); n > limit {
		return nil, status.Errorf(codes.ResourceExhausted, "context manifest is %d bytes, over the limit of %d bytes (--context-max-manifest-bytes)", n, limit)
	}
	total, err := ctxmanifest.Validate(req.Manifest, g.limitsFor(ctx).Context)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	size, err := encodeManifest(req.Manifest, h)
	if err != nil {
		return nil, err
	}
	digest := &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(h.Sum(nil)), SizeBytes: size}
	have, err := g.blobs.Touch(ctx, digest.Hash)
	if err != nil {
		return nil, err
	}
	missing, err := g.missingFiles(ctx, req.Manifest)
	if err != nil {
		return nil, err
	}
	var missingBytes int64
	for _, d := range missing {
		missingBytes += d.SizeBytes
	}
	tenant := tenantOf(ctx)
	need := missingBytes
	if !have {
		need += size
	}
	if err := g.checkQuota(ctx, tenant, need); err != nil {
		return nil, err
	}
	if !have {
		if err := g.storeManifest(ctx, tenant, req.Manifest, digest); err != nil {
			return nil, err
		}
	}
	contextBytesDeclared.Add(float64(total))
	contextBytesDeduplicated.Add(float64(total - missingBytes))
	return &kilnv1.PutManifestResponse{Digest: digest, Missing: missing, TotalBytes: total}, nil
}

// storeManifest charges tenant for the manifest and stores it, streaming
// its encoding into the CAS.
func (g *Gateway) storeManifest(ctx context.Context, tenant string, m *kilnv1.ContextManifest, d *kilnv1.Digest) error {
	if err := g.charge(ctx, tenant, d.SizeBytes); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := encodeManifest(m, pw)
		pw.CloseWithError(err)
	}()
	err := g.blobs.PutWith(ctx, d.Hash, d.SizeBytes, pr, cas.Meta{Owner: tenant, Manifest: true})
	pr.CloseWithError(errors.New("manifest store ended")) // unblock the encoder if Put stopped early
	if err != nil {
		g.refund(ctx, tenant, d.SizeBytes)
	}
	return err
}

// missingFiles returns the distinct file blobs of m that the CAS lacks,
// asking in batches (cas.Store.HasMany).
func (g *Gateway) missingFiles(ctx context.Context, m *kilnv1.ContextManifest) ([]*kilnv1.Digest, error) {
	seen := map[string]bool{}
	var files []*kilnv1.Digest
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE && !seen[e.Digest.Hash] {
			seen[e.Digest.Hash] = true
			files = append(files, e.Digest)
		}
	}
	have, err := g.hasMany(ctx, files)
	if err != nil {
		return nil, err
	}
	lacking := make([]bool, len(files))
	for i := range files {
		lacking[i] = !have[i]
	}
	var missing []*kilnv1.Digest
	for i, d := range files {
		if lacking[i] {
			missing = append(missing, d)
		}
	}
	return missing, nil
}

// UploadBlobs receives blobs chunk by chunk and stores each one only after
// its bytes were verified against its digest.
func (g *Gateway) UploadBlobs(stream kilnv1.ContextService_UploadBlobsServer) error {
	ctx := stream.Context()
	tenant := tenantOf(ctx)
	resp := &kilnv1.UploadBlobsResponse{}
	var cur *blobWriter
	defer func() {
		if cur != nil {
			cur.abort(errors.New("upload ended early"))
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if cur != nil {
				return invalid("blob %s ended without finish_write after %d of %d bytes", cur.digest.Hash, cur.written, cur.digest.SizeBytes)
			}
			return stream.SendAndClose(resp)
		}
		if err != nil {
			return err
		}
		if cur == nil {
			if req.Digest == nil {
				return invalid("the first message of a blob must carry its digest")
			}
			if cur, err = g.startBlob(ctx, tenant, req.Digest); err != nil {
				return err
			}
		} else if req.Digest != nil && req.Digest.Hash != cur.digest.Hash {
			return invalid("blob %s ended without finish_write; got a chunk of %s", cur.digest.Hash, req.Digest.Hash)
		}
		if req.WriteOffset != cur.written {
			return invalid("blob %s: chunk at offset %d, expected offset %d", cur.digest.Hash, req.WriteOffset, cur.written)
		}
		if cur.written+int64(len(req.Data)) > cur.digest.SizeBytes {
			uploadBlobsRefused.Inc()
			return invalid("blob %s: more bytes sent than its declared size %d", cur.digest.Hash, cur.digest.SizeBytes)
		}
		if resp.BytesReceived+int64(len(req.Data)) > g.limits.Context.MaxTotalBytes {
			uploadBlobsRefused.Inc()
			return status.Errorf(codes.ResourceExhausted, "upload is over %d bytes (the context size limit)", g.limits.Context.MaxTotalBytes)
		}
		if err := cur.write(req.Data); err != nil {
			cur = nil
			return err
		}
		resp.BytesReceived += int64(len(req.Data))
		uploadBytesReceived.Add(float64(len(req.Data)))
		if req.FinishWrite {
			if err := cur.finish(); err != nil {
				cur = nil
				uploadBlobsRefused.Inc()
				return err
			}
			uploadBlobsStored.Inc()
			resp.Stored = append(resp.Stored, cur.digest)
			cur = nil
		}
	}
}

// blobWriter streams one blob into the CAS through a pipe.
type blobWriter struct {
	digest  *kilnv1.Digest
	written int64
	pw      *io.PipeWriter
	done    chan struct{} // closed when the store finished; err is then set
	err     error
}

// startBlob begins storing a blob for tenant. A blob the farm holds already
// is received and dropped, uncharged; a new one is charged to tenant
// before any byte of it is stored (ResourceExhausted over its quota) and
// refunded if it is not stored after all.
func (g *Gateway) startBlob(ctx context.Context, tenant string, d *kilnv1.Digest) (*blobWriter, error) {
	if !cas.ValidDigest(d.Hash) {
		return nil, invalid("digest %q is not of the form sha256:<64 hex digits>", d.Hash)
	}
	if d.SizeBytes < 0 {
		return nil, invalid("blob %s: negative size %d", d.Hash, d.SizeBytes)
	}
	if d.SizeBytes > g.limits.Context.MaxTotalBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "blob %s is %d bytes, over the limit of %d bytes", d.Hash, d.SizeBytes, g.limits.Context.MaxTotalBytes)
	}
	have, err := g.blobs.Has(ctx, d.Hash, d.SizeBytes)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	w := &blobWriter{digest: d, pw: pw, done: make(chan struct{})}
	if have {
		go func() {
			defer close(w.done)
			_, _ = io.Copy(io.Discard, pr)
		}()
		return w, nil
	}
	if err := g.charge(ctx, tenant, d.SizeBytes); err != nil {
		return nil, err
	}
	go func() {
		defer close(w.done)
		w.err = g.blobs.PutWith(ctx, d.Hash, d.SizeBytes, pr, cas.Meta{Owner: tenant})
		pr.CloseWithError(w.err) // unblock the writer if Put stopped early
		if w.err != nil {
			g.refund(ctx, tenant, d.SizeBytes)
		}
	}()
	return w, nil
}

func (w *blobWriter) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := w.pw.Write(p); err != nil {
		return w.result(fmt.Errorf("blob %s: %w", w.digest.Hash, err))
	}
	w.written += int64(len(p))
	return nil
}

func (w *blobWriter) finish() error {
	w.pw.Close()
	return w.result(nil)
}

func (w *blobWriter) abort(err error) {
	w.pw.CloseWithError(err)
	<-w.done
}

// result waits for the store and prefers its error, which says why.
func (w *blobWriter) result(fallback error) error {
	<-w.done
	if w.err != nil {
		return w.err
	}
	return fallback
}
