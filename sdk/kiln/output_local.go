package kiln

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
)

// local writes a local output into dir. Every path is opened through an
// os.Root of dir, so nothing the manifest or dir's earlier content holds
// (a symlink, say) leads a write outside dir. Blobs are staged, verified,
// in dir/.kiln-download, which is removed once every file is in place.
func (d *download) local(ctx context.Context, parts []*outputPart, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the output directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("opening the output directory: %w", err)
	}
	defer root.Close()
	if fi, err := root.Lstat(stagingDir); err == nil && !fi.IsDir() {
		if err := root.Remove(stagingDir); err != nil {
			return err
		}
	}

	// Files already in place with the right digest stay; the blobs of the
	// others are fetched, each once.
	present := map[string]bool{}
	uses := map[string]int{}
	var blobs []blobRef
	for _, p := range parts {
		for _, e := range p.manifest.Entries {
			if e.Type != kilnv1.EntryType_ENTRY_TYPE_FILE {
				continue
			}
			name := path.Join(p.prefix, e.Path)
			if ok, _ := rootFileHasDigest(root, name, e.Digest); ok {
				present[name] = true
				d.st.Present++
				continue
			}
			if uses[e.Digest.Hash] == 0 {
				blobs = append(blobs, blobRef{buildID: p.buildID, d: e.Digest})
			}
			uses[e.Digest.Hash]++
		}
	}
	staging := filepath.Join(dir, stagingDir)
	if err := d.stage(ctx, staging, blobs); err != nil {
		return err
	}

	type dirMode struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMode
	for _, p := range parts {
		if p.prefix != "" {
			if err := ensureDir(root, p.prefix); err != nil {
				return err
			}
		}
		for _, e := range p.manifest.Entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := path.Join(p.prefix, e.Path)
			if e.Type != kilnv1.EntryType_ENTRY_TYPE_DIRECTORY {
				if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
					return fmt.Errorf("output %s: %w", name, err)
				}
			}
			var err error
			switch e.Type {
			case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
				err = ensureDir(root, name)
				dirs = append(dirs, dirMode{name, buildctx.FileMode(e.Mode), time.Unix(e.MtimeUnix, 0)})
			case kilnv1.EntryType_ENTRY_TYPE_FILE:
				if !present[name] {
					uses[e.Digest.Hash]--
					err = placeFile(root, path.Join(stagingDir, filepath.Base(stagedPath("", e.Digest))), name, uses[e.Digest.Hash] == 0)
				}
				if err == nil {
					err = root.Chmod(name, buildctx.FileMode(e.Mode))
				}
				if err == nil {
					err = root.Chtimes(name, time.Unix(e.MtimeUnix, 0), time.Unix(e.MtimeUnix, 0))
				}
			case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
				err = placeSymlink(root, e.LinkTarget, name)
			case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
				err = placeHardLink(root, path.Join(p.prefix, e.LinkTarget), name)
			}
			if err != nil {
				return fmt.Errorf("output %s: %w", name, err)
			}
		}
	}
	// Directories get their modes last: a read-only one was written into.
	for _, dm := range slices.Backward(dirs) {
		if err := root.Chmod(dm.name, dm.mode); err != nil {
			return fmt.Errorf("output %s: %w", dm.name, err)
		}
		if err := root.Chtimes(dm.name, dm.mtime, dm.mtime); err != nil {
			return fmt.Errorf("output %s: %w", dm.name, err)
		}
	}
	return root.RemoveAll(stagingDir)
}

// rootFileHasDigest reports whether name is a regular file holding d.
func rootFileHasDigest(root *os.Root, name string, d *kilnv1.Digest) (bool, error) {
	fi, err := root.Lstat(name)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != d.SizeBytes {
		return false, err
	}
	f, err := root.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return readerHasDigest(f, d)
}

// ensureDir makes name a directory, replacing whatever else is there, and
// leaves it writable until its mode is set.
func ensureDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case err == nil && fi.IsDir():
		return root.Chmod(name, 0o755)
	case err == nil:
		if err := root.RemoveAll(name); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return root.Mkdir(name, 0o755)
}

// removeAny removes whatever is at name, if anything.
func removeAny(root *os.Root, name string) error {
	if _, err := root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return root.RemoveAll(name)
}

// placeFile puts the staged blob at name: moved when last is set (no
// other file needs it), copied otherwise, each time under a temporary
// name renamed over whatever was there.
func placeFile(root *os.Root, staged, name string, last bool) error {
	if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
		if err := root.RemoveAll(name); err != nil {
			return err
		}
	}
	if last {
		return root.Rename(staged, name)
	}
	tmp := name + partialSuffix
	src, err := root.Open(staged)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return root.Rename(tmp, name)
}

// placeSymlink makes name a symlink to target (kept as the image has it),
// unless it is one already.
func placeSymlink(root *os.Root, target, name string) error {
	if fi, err := root.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if t, err := root.Readlink(name); err == nil && t == target {
			return nil
		}
	}
	if err := removeAny(root, name); err != nil {
		return err
	}
	return root.Symlink(target, name)
}

// placeHardLink makes name a hard link to target, an earlier file of the
// output, unless it is one already.
func placeHardLink(root *os.Root, target, name string) error {
	tfi, err := root.Lstat(target)
	if err != nil {
		return err
	}
	if fi, err := root.Lstat(name); err == nil && os.SameFile(fi, tfi) {
		return nil
	}
	if err := removeAny(root, name); err != nil {
		return err
	}
	return root.Link(target, name)
}
