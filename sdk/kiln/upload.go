package kiln

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// UploadChunkSize is the payload size of one UploadBlobs message.
const UploadChunkSize = 1 << 20

// UploadStats says how much of a context UploadContext had to send.
type UploadStats struct {
	// Files counts the context's regular files and Bytes adds up their sizes.
	Files int
	Bytes int64
	// Blobs counts the distinct file blobs uploaded and UploadedBytes adds
	// up their sizes.
	Blobs         int
	UploadedBytes int64
	// PresentBytes is Bytes - UploadedBytes: file bytes the farm already
	// held, or that an identical file uploaded once carried.
	PresentBytes int64
}

// UploadOption configures UploadContext.
type UploadOption func(*uploadOptions)

type uploadOptions struct {
	progress func(ContextProgress)
}

// WithUploadProgress makes UploadContext call fn as it uploads blobs; the
// files of ContextProgress count blobs. Calls never overlap.
func WithUploadProgress(fn func(ContextProgress)) UploadOption {
	return func(o *uploadOptions) { o.progress = fn }
}

// UploadContext makes sure the farm holds the packed context: PutManifest
// stores the manifest and says which file blobs the farm lacks, and only
// those are sent, each once however many files share it: files up to
// BatchBlobMaxBytes many to a BatchUpdateBlobs call, larger ones in
// UploadChunkSize chunks on one UploadBlobs stream. A stream that breaks
// with codes.Unavailable is followed by another, to whichever gateway
// answers, with the blobs the farm still lacks (see WithFailover). Each
// file is read again
// and re-hashed as it is sent; one that no longer matches its manifest
// digest stops the upload with a *FileChangedError (and drops the stat
// cache, so the next PackContext reads every file). On success the
// Context's Ref names the manifest, and Client.Build does not upload it
// again.
func (c *Client) UploadContext(ctx context.Context, bc *Context, opts ...UploadOption) (UploadStats, error) {
	if bc == nil || bc.manifest == nil {
		return UploadStats{}, invalidArgumentf("uploading context: no packed context")
	}
	var o uploadOptions
	for _, opt := range opts {
		opt(&o)
	}
	stats := UploadStats{Files: bc.stats.Files, Bytes: bc.stats.Bytes}
	resp, err := c.contexts.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: bc.manifest})
	if err != nil {
		return stats, fmt.Errorf("uploading context: sending its manifest: %w", err)
	}
	if resp.GetDigest().GetHash() == "" {
		return stats, status.Error(codes.Internal, "uploading context: the gateway returned no manifest digest")
	}
	blobs, err := bc.missingBlobs(resp.GetMissing())
	if err != nil {
		return stats, err
	}
	if len(blobs) > 0 {
		stats.Blobs = len(blobs)
		rep := &progressReporter{fn: o.progress, p: ContextProgress{TotalFiles: len(blobs)}}
		for _, e := range blobs {
			rep.p.TotalBytes += e.Size
		}
		for _, e := range blobs {
			stats.UploadedBytes += e.Size
		}
		err = c.uploadMissing(ctx, bc.dir, blobs, rep)
		if err != nil {
			var changed *FileChangedError
			if errors.As(err, &changed) {
				removeStatCache(bc.cacheFile)
			}
			return stats, fmt.Errorf("uploading context: %w", err)
		}
	}
	stats.PresentBytes = stats.Bytes - stats.UploadedBytes
	bc.setRef(&kilnv1.ContextRef{Digest: resp.GetDigest(), Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST})
	return stats, nil
}

// missingBlobs returns one file entry per distinct missing digest, in the
// order the farm listed them.
func (c *Context) missingBlobs(missing []*kilnv1.Digest) ([]*kilnv1.ContextEntry, error) {
	var out []*kilnv1.ContextEntry
	seen := make(map[string]bool, len(missing))
	for _, d := range missing {
		if seen[d.GetHash()] {
			continue
		}
		seen[d.GetHash()] = true
		e, ok := c.blobs[d.GetHash()]
		if !ok {
			return nil, status.Errorf(codes.Internal, "uploading context: the gateway asked for blob %s, which no file of the context has", d.GetHash())
		}
		out = append(out, e)
	}
	return out, nil
}

// uploadMissing uploads blobs. After a broken stream it asks the farm
// which of them it still lacks (those the gateway finished storing stay:
// blobs are content-addressed) and streams those again, until none is
// missing or the outage limit passes without a blob stored.
func (c *Client) uploadMissing(ctx context.Context, root string, blobs []*kilnv1.ContextEntry, rep *progressReporter) error {
	down := c.retry.outage()
	total := len(blobs)
	for {
		err := c.uploadBlobs(ctx, root, blobs, rep)
		if err == nil {
			return nil
		}
		for err != nil {
			if err = down.wait(ctx, err); err != nil {
				return err
			}
			var missing []*kilnv1.ContextEntry
			if missing, err = c.stillMissing(ctx, blobs); err == nil {
				if len(missing) < len(blobs) {
					down.progressed()
				}
				blobs = missing
			}
		}
		if len(blobs) == 0 {
			return nil
		}
		// Progress restarts from the blobs the farm holds: the bytes of a
		// blob cut short are sent again.
		var left int64
		for _, e := range blobs {
			left += e.Size
		}
		rep.set(total-len(blobs), rep.total()-left)
	}
}

// stillMissing returns the entries of blobs whose blob the farm lacks.
func (c *Client) stillMissing(ctx context.Context, blobs []*kilnv1.ContextEntry) ([]*kilnv1.ContextEntry, error) {
	req := &kilnv1.FindMissingBlobsRequest{}
	for _, e := range blobs {
		req.Digests = append(req.Digests, e.Digest)
	}
	resp, err := c.contexts.FindMissingBlobs(ctx, req)
	if err != nil {
		return nil, err
	}
	missing := make(map[string]bool, len(resp.GetMissing()))
	for _, d := range resp.GetMissing() {
		missing[d.GetHash()] = true
	}
	var out []*kilnv1.ContextEntry
	for _, e := range blobs {
		if missing[e.Digest.GetHash()] {
			out = append(out, e)
		}
	}
	return out, nil
}

// uploadBlobs sends the small blobs in batches (BatchUpdateBlobs) and the
// others one after another on one UploadBlobs stream (all of them there
// when the gateway takes no batches).
func (c *Client) uploadBlobs(ctx context.Context, root string, blobs []*kilnv1.ContextEntry, rep *progressReporter) error {
	batches, large := splitBatches(blobs)
	if len(batches) > 0 {
		err := c.uploadBatches(ctx, root, batches, rep)
		if errors.Is(err, errBatchesUnsupported) {
			large = blobs
		} else if err != nil {
			return err
		}
	}
	if len(large) == 0 {
		return nil
	}
	return c.streamBlobs(ctx, root, large, rep)
}

// streamBlobs streams blobs one after another on one UploadBlobs stream.
func (c *Client) streamBlobs(ctx context.Context, root string, blobs []*kilnv1.ContextEntry, rep *progressReporter) error {
	// Cancelling the stream's context makes the gateway drop a blob left
	// unfinished when we stop early.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.contexts.UploadBlobs(ctx)
	if err != nil {
		return err
	}
	for _, e := range blobs {
		if _, err := sendBlob(stream, root, e, rep); err != nil {
			return err
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	stored := make(map[string]bool, len(resp.GetStored()))
	for _, d := range resp.GetStored() {
		stored[d.GetHash()] = true
	}
	for _, e := range blobs {
		if !stored[e.Digest.Hash] {
			return status.Errorf(codes.Internal, "the gateway did not confirm storing blob %s (%s)", e.Digest.Hash, e.Path)
		}
	}
	return nil
}

// blobStream is the sending side of one UploadBlobs call.
type blobStream interface {
	Send(*kilnv1.UploadBlobsRequest) error
	CloseAndRecv() (*kilnv1.UploadBlobsResponse, error)
}

// sendBlob streams the file of entry e: the first message carries the
// digest, every message its write_offset, the last one finish_write. The
// last chunk goes only once the whole file re-hashed to the digest, so a
// file that changed since PackContext is never stored under it.
func sendBlob(stream blobStream, root string, e *kilnv1.ContextEntry, rep *progressReporter) (int64, error) {
	abs := filepath.Join(root, filepath.FromSlash(e.Path))
	changed := &FileChangedError{Path: abs, While: "uploading"}
	f, err := openBlob(abs, e)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, changed
	}
	if err != nil {
		return 0, fmt.Errorf("reading %q: %w", e.Path, err)
	}
	defer f.Close()

	size := e.Digest.GetSizeBytes()
	h := sha256.New()
	var offset int64
	for {
		// A fresh buffer per message: gRPC may still hold the last one
		// (stats handlers read messages lazily).
		buf := make([]byte, min(UploadChunkSize, size-offset))
		if _, err := io.ReadFull(f, buf); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return offset, changed // shrank
		} else if err != nil {
			return offset, fmt.Errorf("reading %q: %w", e.Path, err)
		}
		h.Write(buf)
		last := offset+int64(len(buf)) == size
		if last {
			var extra [1]byte
			if _, err := io.ReadFull(f, extra[:]); err == nil {
				return offset, changed // grew
			} else if !errors.Is(err, io.EOF) {
				return offset, fmt.Errorf("reading %q: %w", e.Path, err)
			}
			if digestString(h.Sum(nil)) != e.Digest.GetHash() {
				return offset, changed
			}
		}
		msg := &kilnv1.UploadBlobsRequest{WriteOffset: offset, Data: buf, FinishWrite: last}
		if offset == 0 {
			msg.Digest = e.Digest
		}
		if err := stream.Send(msg); err != nil {
			if errors.Is(err, io.EOF) {
				// The gateway ended the stream; its status says why.
				if _, err = stream.CloseAndRecv(); err == nil {
					err = status.Errorf(codes.Internal, "the gateway ended the upload before blob %s", e.Digest.GetHash())
				}
			}
			return offset, err
		}
		offset += int64(len(buf))
		rep.add(0, int64(len(buf)))
		if last {
			rep.add(1, 0)
			return offset, nil
		}
	}
}

// openBlob opens the file of entry e at abs to send its blob. A socket's
// blob is the empty one, served from memory: opening a socket fails (and
// must not connect to anything).
func openBlob(abs string, e *kilnv1.ContextEntry) (io.ReadCloser, error) {
	if e.Socket {
		return io.NopCloser(strings.NewReader("")), nil
	}
	return os.Open(abs)
}
