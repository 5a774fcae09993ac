package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sync/errgroup"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// repository is one simulated source repository: a small context with its
// own Dockerfile, uploaded once and built many times, each build with a
// distinct tag so the gateway does not merge it with another in flight.
type repository struct {
	index int
	name  string
	ref   *kilnv1.ContextRef
}

// baseImages are the FROM lines the repositories share, so agents' caches
// overlap as on a real farm (same base, same first instructions).
var baseImages = []string{"golang:1.25", "golang:1.26", "node:22", "node:24", "python:3.13", "python:3.14", "debian:13", "alpine:3.22"}

type contextFile struct {
	path string
	data []byte
}

// files of repository i, sorted by path as a manifest must be.
func repositoryFiles(i int) []contextFile { return repositoryFilesAt(i, -1) }

// repositoryFilesAt is repository i at commit c: main.src differs from
// commit to commit (-1: the first commit).
func repositoryFilesAt(i, c int) []contextFile {
	dockerfile := fmt.Sprintf("FROM %s\nWORKDIR /src\nCOPY deps.txt ./\nRUN fetch-deps deps.txt\nCOPY . .\nRUN make build APP=repo-%04d\n",
		baseImages[i%len(baseImages)], i)
	return []contextFile{
		{"Dockerfile", []byte(dockerfile)},
		{"deps.txt", fmt.Appendf(nil, "repo-%04d depends on lib-%d and lib-%d\n", i, i%7, i%11)},
		{"main.src", fmt.Appendf(nil, "print repo-%04d commit %d\n", i, c)},
	}
}

func digestOf(b []byte) *kilnv1.Digest {
	sum := sha256.Sum256(b)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(b))}
}

// uploadRepositories uploads n repositories' contexts through the gateway,
// as manifests (what the kiln CLI sends: PutManifest, then UploadBlobs of
// the missing files) or as tar blobs.
func uploadRepositories(ctx context.Context, cs kilnv1.ContextServiceClient, n int, format string) ([]repository, error) {
	repos := make([]repository, n)
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(8)
	for i := range repos {
		eg.Go(func() error {
			ref, err := uploadContext(ctx, cs, format, repositoryFiles(i))
			if err != nil {
				return fmt.Errorf("upload context of repository %d: %w", i, err)
			}
			repos[i] = repository{index: i, name: fmt.Sprintf("team-%02d/repo-%04d", i%20, i), ref: ref}
			return nil
		})
	}
	return repos, eg.Wait()
}

// uploadContext uploads files as a context in the given format.
func uploadContext(ctx context.Context, cs kilnv1.ContextServiceClient, format string, files []contextFile) (*kilnv1.ContextRef, error) {
	switch format {
	case "manifest":
		return uploadManifest(ctx, cs, files)
	case "tar":
		return uploadTar(ctx, cs, files)
	}
	return nil, fmt.Errorf("context format %q: want manifest or tar", format)
}

// newCommit uploads repo's context at commit c, one file changed, as a CI
// job does before it starts a build of a new commit.
func newCommit(ctx context.Context, cs kilnv1.ContextServiceClient, format string, repo repository, c int) (repository, error) {
	ref, err := uploadContext(ctx, cs, format, repositoryFilesAt(repo.index, c))
	if err != nil {
		return repo, fmt.Errorf("upload commit %d of %s: %w", c, repo.name, err)
	}
	repo.ref = ref
	return repo, nil
}

func uploadManifest(ctx context.Context, cs kilnv1.ContextServiceClient, files []contextFile) (*kilnv1.ContextRef, error) {
	m := &kilnv1.ContextManifest{}
	blobs := map[string][]byte{}
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for _, f := range files {
		d := digestOf(f.data)
		blobs[d.Hash] = f.data
		m.Entries = append(m.Entries, &kilnv1.ContextEntry{
			Path: f.path, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: d.SizeBytes, Digest: d, MtimeUnix: mtime,
		})
	}
	resp, err := cs.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: m})
	if err != nil {
		return nil, fmt.Errorf("put manifest: %w", err)
	}
	var missing []blob
	for _, d := range resp.Missing {
		missing = append(missing, blob{d, blobs[d.Hash]})
	}
	if err := uploadBlobs(ctx, cs, missing); err != nil {
		return nil, err
	}
	return &kilnv1.ContextRef{Digest: resp.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}, nil
}

func uploadTar(ctx context.Context, cs kilnv1.ContextServiceClient, files []contextFile) (*kilnv1.ContextRef, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.path, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	d := digestOf(buf.Bytes())
	if err := uploadBlobs(ctx, cs, []blob{{d, buf.Bytes()}}); err != nil {
		return nil, err
	}
	return &kilnv1.ContextRef{Digest: d, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}, nil
}

type blob struct {
	digest *kilnv1.Digest
	data   []byte
}

// uploadBlobs sends each blob as one chunk on one UploadBlobs stream.
func uploadBlobs(ctx context.Context, cs kilnv1.ContextServiceClient, blobs []blob) error {
	if len(blobs) == 0 {
		return nil
	}
	stream, err := cs.UploadBlobs(ctx)
	if err != nil {
		return fmt.Errorf("upload blobs: %w", err)
	}
	for _, b := range blobs {
		if err := stream.Send(&kilnv1.UploadBlobsRequest{Digest: b.digest, Data: b.data, FinishWrite: true}); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("upload blob %s: %w", b.digest.Hash, err)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("upload blobs: %w", err)
	}
	return nil
}
