package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/contexttar"
	"github.com/kilnbuild/kiln/agent/localcas"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// errEngineStopped ends the writing of a context tar the engine no longer reads.
var errEngineStopped = errors.New("the engine stopped reading the build context")

// openContext returns the build context as the uncompressed tar the engine
// reads, and a func to call once the engine is done with it; that func
// waits for everything openContext started and returns why the context
// could not be written in full, if it could not.
//
// A TAR context is its blob, read from the farm's CAS. A MANIFEST context is
// generated from the manifest and the agent's local CAS, which first
// fetches the blobs it lacks.
func (a *Agent) openContext(ctx context.Context, ref *kilnv1.ContextRef, ev *events) (io.Reader, func() error, error) {
	d := ref.GetDigest()
	if d == nil {
		return nil, nil, errors.New("build has no context")
	}
	if ref.Format == kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
		return a.manifestContext(ctx, d, ev)
	}
	r, err := a.blobs.Get(ctx, d.Hash)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch build context: %w", farm(err))
	}
	contextFetchedBytes.Add(float64(d.SizeBytes))
	rec := &errRecorder{r: r}
	return rec, rec.Close, nil
}

// manifestContext makes the manifest's files local and streams them as a
// tar from a goroutine that the returned func stops and waits for.
func (a *Agent) manifestContext(ctx context.Context, d *kilnv1.Digest, ev *events) (io.Reader, func() error, error) {
	m, err := a.readManifest(ctx, d)
	if err != nil {
		return nil, nil, err
	}
	total, err := ctxmanifest.Validate(m, a.cfg.ContextLimits)
	if err != nil {
		return nil, nil, fmt.Errorf("context manifest %s is refused: %s", d.Hash, status.Convert(err).Message())
	}
	var files []localcas.Blob
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			files = append(files, localcas.Blob{Digest: e.Digest.Hash, Size: e.Size})
		}
	}
	pin, st, err := a.cache.Ensure(ctx, files, a.blobs.Get)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch build context files: %w", farm(err))
	}
	observeContextFetch(st)
	ev.internal("context: %d files, %s; fetched %d blobs (%s) from the farm, %d already on this agent",
		len(files), megabytes(total), st.Fetched, megabytes(st.FetchedBytes), st.Local)
	ev.logger.InfoContext(ctx, "build context ready", "manifest", d.Hash, "files", len(files), "bytes", total,
		"fetched_blobs", st.Fetched, "fetched_bytes", st.FetchedBytes, "local_blobs", st.Local)

	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		err := contexttar.Write(pw, m, a.cfg.ContextLimits, a.cache)
		pw.CloseWithError(err)
		written <- err
	}()
	return pr, func() error {
		pr.CloseWithError(errEngineStopped)
		err := <-written
		pin.Release()
		if errors.Is(err, errEngineStopped) {
			return nil
		}
		return err
	}, nil
}

// readManifest reads and decodes a context manifest through the local CAS.
func (a *Agent) readManifest(ctx context.Context, d *kilnv1.Digest) (*kilnv1.ContextManifest, error) {
	if d.SizeBytes > ctxmanifest.MaxManifestBytes {
		return nil, fmt.Errorf("context manifest %s is %d bytes, over the limit of %d bytes", d.Hash, d.SizeBytes, ctxmanifest.MaxManifestBytes)
	}
	pin, _, err := a.cache.Ensure(ctx, []localcas.Blob{{Digest: d.Hash, Size: d.SizeBytes}}, a.blobs.Get)
	if err != nil {
		return nil, fmt.Errorf("fetch context manifest: %w", farm(err))
	}
	defer pin.Release()
	r, err := a.cache.Open(d.Hash)
	if err != nil {
		return nil, fmt.Errorf("read context manifest: %w", err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, ctxmanifest.MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read context manifest %s: %w", d.Hash, err)
	}
	m, err := ctxmanifest.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("context manifest %s: %s", d.Hash, status.Convert(err).Message())
	}
	return m, nil
}

func megabytes(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// dirName is an agent name that is safe as one path element.
var dirName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// defaultCacheDir is <user cache dir>/kiln-cas/<agent name>: one directory
// per agent, so agents sharing a machine do not share a cache.
func defaultCacheDir(name string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no directory for the agent's blob cache (%v): set one with --blob-cache-dir", err)
	}
	if !dirName.MatchString(name) {
		sum := sha256.Sum256([]byte(name))
		name = "agent-" + hex.EncodeToString(sum[:8])
	}
	return filepath.Join(base, "kiln-cas", name), nil
}
