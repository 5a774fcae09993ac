package agent

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
)

// listOutputTar lists the engine's tar export at name (its tar exporter's,
// as `docker build -o type=tar` writes it) as a ContextManifest whose
// entries keep the tar's owners (uid, gid), modes and mtimes, for the
// client to write the same tar. Each regular file's content is spooled
// into dir under its digest, once per digest, for upload; the export is
// removed once read. Entries a manifest cannot hold (devices, pipes) are
// left out, as the local exporter leaves them out.
func listOutputTar(name, dir string) (*kilnv1.ContextManifest, []outputFile, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, nil, err
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(name)
	defer f.Close()
	byPath := map[string]*kilnv1.ContextEntry{}
	var files []outputFile
	spooled := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read the engine's tar: %w", err)
		}
		p, err := buildctx.CleanPath(h.Name)
		if err != nil {
			if path := strings.Trim(h.Name, "/"); path == "" || path == "." {
				continue // the root
			}
			return nil, nil, fmt.Errorf("the engine's tar entry %q %v", h.Name, err)
		}
		e := &kilnv1.ContextEntry{
			Path: p, Mode: uint32(h.Mode) & buildctx.PermBits, MtimeUnix: h.ModTime.Unix(),
			Uid: uint32(h.Uid), Gid: uint32(h.Gid),
		}
		switch h.Typeflag {
		case tar.TypeReg:
			digest, n, err := spool(tr, dir)
			if err != nil {
				return nil, nil, fmt.Errorf("read %s from the engine's tar: %w", p, err)
			}
			e.Type, e.Size, e.Digest = kilnv1.EntryType_ENTRY_TYPE_FILE, n, &kilnv1.Digest{Hash: digest, SizeBytes: n}
			if !spooled[digest] {
				spooled[digest] = true
				files = append(files, outputFile{path: spoolPath(dir, digest), digest: digest})
			}
		case tar.TypeDir:
			e.Type = kilnv1.EntryType_ENTRY_TYPE_DIRECTORY
		case tar.TypeSymlink:
			e.Type, e.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_SYMLINK, h.Linkname
		case tar.TypeLink:
			target, err := buildctx.CleanPath(h.Linkname)
			if err != nil {
				return nil, nil, fmt.Errorf("the engine's tar entry %q links to %q, which %v", h.Name, h.Linkname, err)
			}
			e.Type, e.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_HARDLINK, target
		default:
			continue
		}
		byPath[p] = e
	}
	m := &kilnv1.ContextManifest{}
	for _, e := range byPath {
		m.Entries = append(m.Entries, e)
	}
	slices.SortFunc(m.Entries, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	for _, e := range m.Entries {
		if e.Type != kilnv1.EntryType_ENTRY_TYPE_HARDLINK {
			continue
		}
		t := byPath[e.LinkTarget]
		if t == nil || t.Type != kilnv1.EntryType_ENTRY_TYPE_FILE {
			return nil, nil, fmt.Errorf("the engine's tar entry %q links to %q, which is not a file of the tar", e.Path, e.LinkTarget)
		}
	}
	relinkHardLinks(m)
	return m, files, nil
}

// spool copies r into dir under its digest, and returns the digest and
// the size.
func spool(r io.Reader, dir string) (string, int64, error) {
	tmp, err := os.CreateTemp(dir, "spool-")
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", 0, err
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp.Name(), spoolPath(dir, digest)); err != nil {
		os.Remove(tmp.Name())
		return "", 0, err
	}
	return digest, n, nil
}

func spoolPath(dir, digest string) string {
	return filepath.Join(dir, strings.TrimPrefix(digest, "sha256:"))
}
