package kiln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"google.golang.org/grpc"
)

// ReadOutput opens one blob of build buildID's output (BuildResult.output,
// asked for with BuildSpec.outputs): the output's manifest or a blob the
// manifest lists, from offset on. The reader returns the gateway's error
// (codes.DataLoss when the farm found the stored bytes corrupt) instead of
// io.EOF when the stream ends badly; it does not check the digest itself
// (DownloadOutput does). codes.NotFound means the build, its output or
// that blob is unknown, or the output expired. Close the reader when done.
func (c *Client) ReadOutput(ctx context.Context, buildID string, d *kilnv1.Digest, offset int64) (io.ReadCloser, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.builds.ReadOutput(sctx, &kilnv1.ReadOutputRequest{BuildId: buildID, Digest: d, Offset: offset})
	r := &outputReader{stream: stream, cancel: cancel, what: fmt.Sprintf("reading output blob %s of build %s", d.GetHash(), buildID)}
	if err == nil {
		err = r.next() // the gateway's refusal comes with the first message
	}
	if err != nil && !errors.Is(err, io.EOF) {
		cancel()
		return nil, err
	}
	return r, nil
}

// outputReader reads a ReadOutput stream as bytes.
type outputReader struct {
	stream grpc.ServerStreamingClient[kilnv1.ReadOutputResponse]
	cancel context.CancelFunc
	what   string
	buf    []byte
	err    error
}

// next receives the next chunk into buf, or sets err.
func (r *outputReader) next() error {
	resp, err := r.stream.Recv()
	switch {
	case errors.Is(err, io.EOF):
		r.err = io.EOF
	case err != nil:
		r.err = fmt.Errorf("%s: %w", r.what, err)
	default:
		r.buf = resp.GetData()
	}
	return r.err
}

func (r *outputReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		_ = r.next()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *outputReader) Close() error {
	r.cancel()
	return nil
}

// outputLimits are what an output manifest is checked against: the rules
// of a context's paths and links, without a context's size limits (an
// output is as large as the build made it).
var outputLimits = buildctx.Limits{MaxTotalBytes: math.MaxInt64, MaxEntries: math.MaxInt32, MaxPathLen: buildctx.DefaultLimits.MaxPathLen}

// readOutputManifest fetches, verifies and checks an output's manifest:
// every path inside the output, every hard link to an earlier file.
func (c *Client) readOutputManifest(ctx context.Context, buildID string, d *kilnv1.Digest) (*kilnv1.ContextManifest, error) {
	if d.GetSizeBytes() > buildctx.MaxManifestBytes {
		return nil, fmt.Errorf("output manifest of build %s is %d bytes, over %d", buildID, d.GetSizeBytes(), buildctx.MaxManifestBytes)
	}
	var data []byte
	err := c.retry.retry(ctx, func() error {
		r, err := c.ReadOutput(ctx, buildID, d, 0)
		if err != nil {
			return err
		}
		defer r.Close()
		data, err = io.ReadAll(io.LimitReader(r, buildctx.MaxManifestBytes+1))
		return err
	})
	if err != nil {
		return nil, err
	}
	if got := sha256Hex(data); got != d.GetHash() {
		return nil, fmt.Errorf("output manifest of build %s: received bytes hash to %s, not %s", buildID, got, d.GetHash())
	}
	m, err := buildctx.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("output manifest of build %s: %w", buildID, err)
	}
	if _, err := buildctx.Validate(m, outputLimits); err != nil {
		return nil, fmt.Errorf("output manifest of build %s: %w", buildID, err)
	}
	return m, nil
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
