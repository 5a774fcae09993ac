package kiln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"golang.org/x/sync/errgroup"
)

// OutputTarget is where DownloadOutput writes a build's output.
type OutputTarget struct {
	// Path is the directory a local output is written into (created when
	// missing), or the file a tar, oci or docker output is written to.
	Path string
	// Writer takes a tar, oci or docker output when Path is empty
	// (standard output, say). Such a download cannot resume.
	Writer io.Writer
	// Type is how to write the output: "" as the build made it; local and
	// tar hold the same files, so either may be written as the other.
	Type string
}

// DownloadStats says what DownloadOutput wrote and fetched.
type DownloadStats struct {
	// Type is the output's type (local, tar, oci or docker).
	Type string
	// Files counts the output's regular files and Bytes adds up their
	// sizes (every platform's, for a multi-platform build).
	Files int
	Bytes int64
	// FetchedBytes are the bytes read from the farm this time.
	FetchedBytes int64
	// Present counts the files already in place with the right digest,
	// not fetched again; Resumed the blobs whose partial download an
	// earlier, interrupted run left, continued from where it stopped.
	Present int
	Resumed int
}

// DownloadOption configures DownloadOutput.
type DownloadOption func(*downloadOptions)

type downloadOptions struct {
	progress func(ContextProgress)
}

// WithDownloadProgress makes DownloadOutput call fn as it fetches blobs;
// the files of ContextProgress count blobs. Calls never overlap.
func WithDownloadProgress(fn func(ContextProgress)) DownloadOption {
	return func(o *downloadOptions) { o.progress = fn }
}

// downloadWorkers is how many blobs DownloadOutput fetches at once.
const downloadWorkers = 4

// partialSuffix ends the name of a blob being downloaded; stagingDir is
// the directory, inside a local output's directory or beside a tar file,
// where blobs wait, verified, until they are put in place.
const (
	partialSuffix = ".kiln-partial"
	stagingDir    = ".kiln-download"
)

// outputPart is one build's output within a download: the build's own, or
// one platform's child of a multi-platform build, under prefix
// ("linux_arm64", as buildx splits platforms).
type outputPart struct {
	buildID  string
	prefix   string
	ref      *kilnv1.OutputRef
	manifest *kilnv1.ContextManifest
}

// DownloadOutput writes the output of b, a build that succeeded with
// BuildSpec.outputs, to to: a local output as the files, directories,
// symlinks and hard links its manifest lists, inside to.Path and never
// outside it; a tar output as one tar of them; an oci or docker output as
// the image tarball the engine exported. A multi-platform build's local
// and tar outputs hold one subdirectory per platform ("linux_amd64/"), as
// buildx writes them. Every blob is verified against its digest before a
// file is put in place (written under a temporary name, then renamed).
//
// Run again after an interruption, it resumes: files already in place
// with the right digest are not fetched again, and a partly downloaded
// blob continues from its length (ReadOutput's offset). Blobs are fetched
// downloadWorkers at a time, each retried on another gateway when one
// becomes unreachable (see WithFailover).
func (c *Client) DownloadOutput(ctx context.Context, b *kilnv1.Build, to OutputTarget, opts ...DownloadOption) (DownloadStats, error) {
	var o downloadOptions
	for _, opt := range opts {
		opt(&o)
	}
	parts, err := c.outputParts(ctx, b)
	if err != nil {
		return DownloadStats{}, err
	}
	st := DownloadStats{Type: parts[0].ref.GetType()}
	for _, p := range parts {
		if p.ref.GetType() != st.Type {
			return st, fmt.Errorf("build %s: its platforms' outputs differ in type (%s, %s)", b.Id, st.Type, p.ref.GetType())
		}
	}
	switch {
	case to.Type == "" || to.Type == st.Type:
	case outputs.IsFilesystem(to.Type) && outputs.IsFilesystem(st.Type):
		st.Type = to.Type
	default:
		return st, fmt.Errorf("build %s's output is type=%s, which cannot be written as type=%s", b.Id, st.Type, to.Type)
	}
	for _, p := range parts {
		for _, e := range p.manifest.Entries {
			if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
				st.Files++
				st.Bytes += e.Size
			}
		}
	}
	d := &download{c: c, st: &st, rep: &progressReporter{fn: o.progress}}
	switch st.Type {
	case outputs.TypeLocal:
		if to.Path == "" {
			return st, errors.New("a local output needs a directory to write into")
		}
		err = d.local(ctx, parts, to.Path)
	case outputs.TypeTar:
		err = d.tar(ctx, parts, to)
	case outputs.TypeOCI, outputs.TypeDocker:
		err = d.image(ctx, parts, to)
	default:
		err = fmt.Errorf("build %s has an output of type %q, which this client cannot write", b.Id, st.Type)
	}
	return st, err
}

// outputParts returns b's output, or its children's for a multi-platform
// build, with their manifests.
func (c *Client) outputParts(ctx context.Context, b *kilnv1.Build) ([]*outputPart, error) {
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		return nil, fmt.Errorf("build %s has no output: it is %s, not succeeded", b.GetId(), strings.ToLower(strings.TrimPrefix(b.GetState().String(), "BUILD_STATE_")))
	}
	var parts []*outputPart
	if len(b.Children) == 0 {
		parts = append(parts, &outputPart{buildID: b.Id, ref: b.GetResult().GetOutput()})
	}
	for _, id := range b.Children {
		child, err := c.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		platform := ""
		if ps := child.GetSpec().GetPlatforms(); len(ps) == 1 {
			platform = ps[0]
		}
		if platform == "" {
			return nil, fmt.Errorf("build %s: child %s names no platform", b.Id, id)
		}
		parts = append(parts, &outputPart{buildID: id, prefix: outputs.PlatformDir(platform), ref: child.GetResult().GetOutput()})
	}
	for _, p := range parts {
		if p.ref.GetManifest() == nil {
			return nil, fmt.Errorf("build %s has no output: build with --output type=local, tar, oci or docker", p.buildID)
		}
		m, err := c.readOutputManifest(ctx, p.buildID, p.ref.GetManifest())
		if err != nil {
			return nil, err
		}
		p.manifest = m
	}
	return parts, nil
}

// download is one DownloadOutput in progress.
type download struct {
	c   *Client
	st  *DownloadStats
	rep *progressReporter
}

// blobRef is a blob to fetch and the build whose output lists it.
type blobRef struct {
	buildID string
	d       *kilnv1.Digest
}

// stage fetches each blob into dir (as dir/<hex>), verified, downloadWorkers
// at a time; blobs already there are kept.
func (d *download) stage(ctx context.Context, dir string, blobs []blobRef) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the download directory: %w", err)
	}
	var todo []blobRef
	var total int64
	for _, b := range blobs {
		if _, err := os.Stat(stagedPath(dir, b.d)); err == nil {
			continue // verified by an earlier run
		}
		todo = append(todo, b)
		total += b.d.SizeBytes
	}
	d.rep.p.TotalFiles, d.rep.p.TotalBytes = len(todo), total
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(downloadWorkers)
	for _, b := range todo {
		g.Go(func() error {
			final := stagedPath(dir, b.d)
			return d.fetch(gctx, b, final+partialSuffix, final)
		})
	}
	return g.Wait()
}

func stagedPath(dir string, d *kilnv1.Digest) string {
	return filepath.Join(dir, strings.TrimPrefix(d.Hash, "sha256:"))
}

// fetch downloads blob b to final, verified: the bytes go to partial first,
// continuing from its length when an earlier run left it, and partial is
// renamed to final once its sha256 and size match. A gateway that becomes
// unreachable mid-blob is replaced and the blob continues from where it
// stopped.
func (d *download) fetch(ctx context.Context, b blobRef, partial, final string) (err error) {
	if err := ctx.Err(); err != nil {
		return err // another blob failed: leave no empty partial behind
	}
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("output blob %s: %w", b.d.Hash, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f) // what an earlier run left, hashed; f is at its end
	if err != nil {
		return fmt.Errorf("output blob %s: reading %s: %w", b.d.Hash, partial, err)
	}
	if n > b.d.SizeBytes {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		h.Reset()
		n = 0
	}
	if n > 0 {
		d.mu(func() { d.st.Resumed++ })
	}
	w := &countingWriter{w: io.MultiWriter(f, h), rep: d.rep, st: d.st}
	defer func() {
		if err != nil && n+w.n == 0 {
			f.Close()
			os.Remove(partial) // nothing to resume from
		}
	}()
	err = d.c.retry.retry(ctx, func() error {
		if n+w.n >= b.d.SizeBytes {
			return nil
		}
		r, err := d.c.ReadOutput(ctx, b.buildID, b.d, n+w.n)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.Copy(w, r)
		return err
	})
	if err != nil {
		return err
	}
	d.rep.add(1, 0)
	if err := verify(h, n+w.n, b.d); err != nil {
		f.Close()
		os.Remove(partial)
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("output blob %s: %w", b.d.Hash, err)
	}
	if err := os.Rename(partial, final); err != nil {
		return fmt.Errorf("output blob %s: %w", b.d.Hash, err)
	}
	return nil
}

// mu runs f with the reporter's lock held, which guards st too.
func (d *download) mu(f func()) {
	d.rep.mu.Lock()
	defer d.rep.mu.Unlock()
	f()
}

// verify checks that h, over n bytes, is digest d.
func verify(h hash.Hash, n int64, d *kilnv1.Digest) error {
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Hash || n != d.SizeBytes {
		return fmt.Errorf("output blob %s: received %d bytes hashing to %s, want %d bytes: discarded", d.Hash, n, got, d.SizeBytes)
	}
	return nil
}

// countingWriter counts what it writes into the download's stats and
// progress.
type countingWriter struct {
	w   io.Writer
	n   int64
	rep *progressReporter
	st  *DownloadStats
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.rep.mu.Lock()
	c.st.FetchedBytes += int64(n)
	c.rep.mu.Unlock()
	c.rep.add(0, int64(n))
	return n, err
}

// stream opens blob b for reading straight from the farm, verified: the
// reader fails at its end when the bytes are not the digest's.
func (d *download) stream(ctx context.Context, b blobRef) (io.ReadCloser, error) {
	r, err := d.c.ReadOutput(ctx, b.buildID, b.d, 0)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{r: r, h: sha256.New(), d: b.d, rep: d.rep, st: d.st}, nil
}

// verifyingReader hashes what it reads and, at EOF, fails unless the
// bytes are its digest's.
type verifyingReader struct {
	r   io.ReadCloser
	h   hash.Hash
	n   int64
	d   *kilnv1.Digest
	rep *progressReporter
	st  *DownloadStats
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	v.st.FetchedBytes += int64(n)
	v.rep.add(0, int64(n))
	if errors.Is(err, io.EOF) {
		if verr := verify(v.h, v.n, v.d); verr != nil {
			return n, verr
		}
		v.rep.add(1, 0)
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.r.Close() }

// image writes an oci or docker output: the one file its manifest lists.
func (d *download) image(ctx context.Context, parts []*outputPart, to OutputTarget) error {
	if len(parts) != 1 {
		return fmt.Errorf("an %s output holds one image; a multi-platform build's images are pushed as one index (--push)", d.st.Type)
	}
	p := parts[0]
	var file *kilnv1.ContextEntry
	for _, e := range p.manifest.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			if file != nil {
				return fmt.Errorf("build %s: its %s output lists several files, want one image tarball", p.buildID, d.st.Type)
			}
			file = e
		}
	}
	if file == nil {
		return fmt.Errorf("build %s: its %s output lists no image tarball", p.buildID, d.st.Type)
	}
	b := blobRef{buildID: p.buildID, d: file.Digest}
	d.rep.p.TotalFiles, d.rep.p.TotalBytes = 1, file.Size
	if to.Path == "" {
		r, err := d.stream(ctx, b)
		if err != nil {
			return err
		}
		defer r.Close()
		if _, err := io.Copy(to.Writer, r); err != nil {
			return fmt.Errorf("writing the %s output: %w", d.st.Type, err)
		}
		return nil
	}
	if ok, err := fileHasDigest(to.Path, file.Digest); err != nil || ok {
		if ok {
			d.st.Present++
		}
		return err
	}
	return d.fetch(ctx, b, to.Path+partialSuffix, to.Path)
}

// fileHasDigest reports whether the regular file at p holds digest d's bytes.
func fileHasDigest(p string, d *kilnv1.Digest) (bool, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != d.SizeBytes {
		return false, err
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return readerHasDigest(f, d)
}

func readerHasDigest(r io.Reader, d *kilnv1.Digest) (bool, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return false, err
	}
	return "sha256:"+hex.EncodeToString(h.Sum(nil)) == d.Hash, nil
}
