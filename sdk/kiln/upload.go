package kiln

import (
	"context"
	"errors"
	"fmt"
	"io"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// UploadChunkSize is the payload size of one UploadBlobs message.
const UploadChunkSize = 1 << 20

// UploadContext makes sure the farm holds the packed context: it asks
// FindMissingBlobs and, only if the blob is missing, streams it with
// UploadBlobs in UploadChunkSize chunks. It returns the bytes uploaded, 0 when
// the farm already had the context.
func (c *Client) UploadContext(ctx context.Context, bc *Context) (int64, error) {
	if bc == nil || bc.file == "" {
		return 0, invalidArgumentf("uploading context: no packed context (closed or nil)")
	}
	want := bc.protoDigest()
	resp, err := c.contexts.FindMissingBlobs(ctx, &kilnv1.FindMissingBlobsRequest{Digests: []*kilnv1.Digest{want}})
	if err != nil {
		return 0, fmt.Errorf("uploading context: finding missing blobs: %w", err)
	}
	if !containsDigest(resp.GetMissing(), want) {
		return 0, nil
	}
	n, err := c.uploadBlob(ctx, bc)
	if err != nil {
		return n, fmt.Errorf("uploading context %s: %w", bc.digest, err)
	}
	return n, nil
}

// uploadBlob streams the context tar: the first message carries the digest,
// every message its write_offset, the last one finish_write.
func (c *Client) uploadBlob(ctx context.Context, bc *Context) (int64, error) {
	r, err := bc.Open()
	if err != nil {
		return 0, err
	}
	defer r.Close()

	// A cancelled stream context releases the stream if we stop early.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.contexts.UploadBlobs(ctx)
	if err != nil {
		return 0, err
	}
	want := bc.protoDigest()
	var offset int64
	for {
		// A fresh buffer per message: gRPC may still hold the last one
		// (stats handlers read messages lazily).
		buf := make([]byte, min(int64(UploadChunkSize), max(bc.size-offset, 1)))
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return offset, fmt.Errorf("reading packed context: %w", rerr)
		}
		last := offset+int64(n) >= bc.size || n < len(buf)
		msg := &kilnv1.UploadBlobsRequest{WriteOffset: offset, Data: buf[:n], FinishWrite: last}
		if offset == 0 {
			msg.Digest = want
		}
		if err := stream.Send(msg); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream; its status says why.
				_, err = stream.CloseAndRecv()
			}
			return offset, err
		}
		offset += int64(n)
		if last {
			break
		}
	}
	if offset != bc.size {
		return offset, fmt.Errorf("packed context is %d bytes, expected %d: it changed after packing", offset, bc.size)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return offset, err
	}
	if !containsDigest(resp.GetStored(), want) {
		return offset, status.Errorf(codes.Internal, "the gateway did not confirm storing blob %s", want.GetHash())
	}
	return offset, nil
}

// containsDigest reports whether list names d's hash (the size follows from it).
func containsDigest(list []*kilnv1.Digest, d *kilnv1.Digest) bool {
	for _, x := range list {
		if x.GetHash() == d.GetHash() {
			return true
		}
	}
	return false
}
