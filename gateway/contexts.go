package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/cas"
)

// FindMissingBlobs returns the digests the farm does not hold.
func (g *Gateway) FindMissingBlobs(ctx context.Context, req *kilnv1.FindMissingBlobsRequest) (*kilnv1.FindMissingBlobsResponse, error) {
	resp := &kilnv1.FindMissingBlobsResponse{}
	for _, d := range req.Digests {
		if !cas.ValidDigest(d.GetHash()) {
			return nil, invalid("digest %q is not of the form sha256:<64 hex digits>", d.GetHash())
		}
		ok, err := g.blobs.Has(ctx, d.Hash, d.SizeBytes)
		if err != nil {
			return nil, err
		}
		if !ok {
			resp.Missing = append(resp.Missing, d)
		}
	}
	return resp, nil
}

// UploadBlobs receives blobs chunk by chunk and stores each one only after
// its bytes were verified against its digest.
func (g *Gateway) UploadBlobs(stream kilnv1.ContextService_UploadBlobsServer) error {
	ctx := stream.Context()
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
			if cur, err = g.startBlob(ctx, req.Digest); err != nil {
				return err
			}
		} else if req.Digest != nil && req.Digest.Hash != cur.digest.Hash {
			return invalid("blob %s ended without finish_write; got a chunk of %s", cur.digest.Hash, req.Digest.Hash)
		}
		if req.WriteOffset != cur.written {
			return invalid("blob %s: chunk at offset %d, expected offset %d", cur.digest.Hash, req.WriteOffset, cur.written)
		}
		if cur.written+int64(len(req.Data)) > cur.digest.SizeBytes {
			return invalid("blob %s: more bytes sent than its declared size %d", cur.digest.Hash, cur.digest.SizeBytes)
		}
		if err := cur.write(req.Data); err != nil {
			cur = nil
			return err
		}
		resp.BytesReceived += int64(len(req.Data))
		if req.FinishWrite {
			if err := cur.finish(); err != nil {
				cur = nil
				return err
			}
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

func (g *Gateway) startBlob(ctx context.Context, d *kilnv1.Digest) (*blobWriter, error) {
	if !cas.ValidDigest(d.Hash) {
		return nil, invalid("digest %q is not of the form sha256:<64 hex digits>", d.Hash)
	}
	if d.SizeBytes < 0 {
		return nil, invalid("blob %s: negative size %d", d.Hash, d.SizeBytes)
	}
	if d.SizeBytes > g.limits.MaxContextBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "blob %s is %d bytes, over the limit of %d bytes", d.Hash, d.SizeBytes, g.limits.MaxContextBytes)
	}
	pr, pw := io.Pipe()
	w := &blobWriter{digest: d, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.err = g.blobs.Put(ctx, d.Hash, d.SizeBytes, pr)
		pr.CloseWithError(w.err) // unblock the writer if Put stopped early
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
