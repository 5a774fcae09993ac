package kiln

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// tar writes a tar output: one tar of the files its manifest lists (under
// a subdirectory per platform for a multi-platform build), to to.Writer
// straight from the farm, or to to.Path through a staging directory beside
// it (to.Path + ".kiln-download", removed at the end), so that an
// interrupted download resumes with the blobs it has.
func (d *download) tar(ctx context.Context, parts []*outputPart, to OutputTarget) error {
	if to.Path == "" {
		return writeOutputTar(to.Writer, parts, func(p *outputPart, e *kilnv1.ContextEntry) (io.ReadCloser, error) {
			return d.stream(ctx, blobRef{buildID: p.buildID, d: e.Digest})
		})
	}
	staging := to.Path + stagingDir
	seen := map[string]bool{}
	var blobs []blobRef
	for _, p := range parts {
		for _, e := range p.manifest.Entries {
			if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE && !seen[e.Digest.Hash] {
				seen[e.Digest.Hash] = true
				blobs = append(blobs, blobRef{buildID: p.buildID, d: e.Digest})
			}
		}
	}
	if err := d.stage(ctx, staging, blobs); err != nil {
		return err
	}
	tmp := to.Path + partialSuffix
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("writing the tar output: %w", err)
	}
	defer f.Close()
	err = writeOutputTar(f, parts, func(_ *outputPart, e *kilnv1.ContextEntry) (io.ReadCloser, error) {
		return os.Open(stagedPath(staging, e.Digest))
	})
	if err == nil {
		err = f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, to.Path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing the tar output %s: %w", to.Path, err)
	}
	return os.RemoveAll(staging)
}

// writeOutputTar writes the parts' entries as one tar, with the owners
// the engine's tar exporter gave them (ContextEntry.uid and gid), reading
// files with open.
func writeOutputTar(w io.Writer, parts []*outputPart, open func(*outputPart, *kilnv1.ContextEntry) (io.ReadCloser, error)) error {
	tw := tar.NewWriter(w)
	for _, p := range parts {
		if p.prefix != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p.prefix + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		for _, e := range p.manifest.Entries {
			hdr := &tar.Header{Name: path.Join(p.prefix, e.Path), Mode: int64(e.Mode), ModTime: time.Unix(e.MtimeUnix, 0),
				Uid: int(e.Uid), Gid: int(e.Gid)}
			switch e.Type {
			case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
				hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
			case kilnv1.EntryType_ENTRY_TYPE_FILE:
				hdr.Typeflag, hdr.Size = tar.TypeReg, e.Size
			case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
				hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.LinkTarget
			case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, path.Join(p.prefix, e.LinkTarget)
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if e.Type != kilnv1.EntryType_ENTRY_TYPE_FILE {
				continue
			}
			r, err := open(p, e)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, r)
			r.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", filepath.ToSlash(hdr.Name), err)
			}
		}
	}
	return tw.Close()
}
