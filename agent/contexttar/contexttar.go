// Package contexttar writes a build context described by a manifest
// (kiln.v1.ContextManifest) as the uncompressed tar a Docker engine builds
// from, streaming file contents from blobs without putting the context on
// disk:
//
//	manifest ──► ctxmanifest.Validate ──► one tar entry per manifest entry ──► w
//	                                          ▲
//	                        Blobs.Open(digest) ┘ (regular files only)
//
// Every entry keeps its path, type, permission bits and mtime, owned by
// uid/gid 0. Symlinks are written as symlinks with their target as given
// (never resolved); hard links as tar hard links to their earlier entry.
// An entry that was a unix socket in the client's context is left out, as
// the docker CLI leaves sockets out of the context it sends.
package contexttar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// Blobs opens file contents by digest; *localcas.Store is one.
type Blobs interface {
	Open(digest string) (io.ReadCloser, error)
}

// ErrBlobSize: a blob does not have the size its manifest entry says.
var ErrBlobSize = errors.New("blob size differs from its context entry")

// maxMtime is the last modification time Docker sets on an extracted file
// (time.Unix(0, 1<<63-1), in 2262); it sets the epoch on files with a later
// time, or one before the epoch.
var maxMtime = time.Unix(0, 1<<63-1).Unix()

// Mtime is the modification time an entry gets in the tar: the manifest's
// mtime_unix, or the epoch where Docker would use the epoch anyway (before
// 1970, after 2262), which also keeps every time representable in a tar.
func Mtime(e *kilnv1.ContextEntry) time.Time {
	if e.MtimeUnix < 0 || e.MtimeUnix > maxMtime {
		return time.Unix(0, 0)
	}
	return time.Unix(e.MtimeUnix, 0)
}

// Write validates m against l, then writes it to w as an uncompressed tar.
// Nothing is written when m is refused; the error is ctxmanifest's gRPC
// status naming the entry. A blob that cannot be opened, or whose size is
// not its entry's, stops the tar part-way with an error.
func Write(w io.Writer, m *kilnv1.ContextManifest, l ctxmanifest.Limits, blobs Blobs) error {
	if _, err := ctxmanifest.Validate(m, l); err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, e := range m.Entries {
		if e.Socket {
			continue // the docker CLI's tar leaves sockets out
		}
		h := &tar.Header{
			Name:    e.Path,
			Mode:    int64(e.Mode),
			ModTime: Mtime(e),
			Uid:     0,
			Gid:     0,
		}
		switch e.Type {
		case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
			h.Typeflag, h.Name = tar.TypeDir, e.Path+"/"
		case kilnv1.EntryType_ENTRY_TYPE_FILE:
			h.Typeflag, h.Size = tar.TypeReg, e.Size
		case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.LinkTarget
		case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
			h.Typeflag, h.Linkname = tar.TypeLink, e.LinkTarget
		default:
			// Validate refuses other types; this guards against it changing.
			return fmt.Errorf("context entry %q has entry type %s, which has no tar form", e.Path, e.Type)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("context entry %q: tar header: %w", e.Path, err)
		}
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			if err := copyBlob(tw, e, blobs); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finish context tar: %w", err)
	}
	return nil
}

// copyBlob writes the content of file entry e, which must be exactly
// e.Size bytes.
func copyBlob(tw *tar.Writer, e *kilnv1.ContextEntry, blobs Blobs) error {
	r, err := blobs.Open(e.Digest.Hash)
	if err != nil {
		return fmt.Errorf("context entry %q: %w", e.Path, err)
	}
	defer r.Close()
	n, err := io.Copy(tw, io.LimitReader(r, e.Size))
	if err != nil {
		return fmt.Errorf("context entry %q: copy blob %s: %w", e.Path, e.Digest.Hash, err)
	}
	if n < e.Size {
		return fmt.Errorf("context entry %q: %w: blob %s ended after %d of %d bytes", e.Path, ErrBlobSize, e.Digest.Hash, n, e.Size)
	}
	var one [1]byte
	if k, _ := io.ReadFull(r, one[:]); k > 0 {
		return fmt.Errorf("context entry %q: %w: blob %s is longer than %d bytes", e.Path, ErrBlobSize, e.Digest.Hash, e.Size)
	}
	return nil
}
