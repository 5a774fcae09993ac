package kiln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
)

// packer walks a context directory and lists the entries to send.
type packer struct {
	ctx    context.Context
	root   string
	ignore *ignoreMatcher

	// entries lists what is sent, in walk order (not yet sorted by path).
	entries []*kilnv1.ContextEntry
	// files are the regular files among entries, to be hashed.
	files []*packedFile
	// sockets are the entries listed for unix sockets (empty files).
	sockets   []*kilnv1.ContextEntry
	symlinks  int
	hardLinks int
	dirCount  int
	// dirs is the stack of directories above the current walk position.
	dirs []*packDir
}

// packedFile is a regular file of the manifest with the stat identity the
// stat cache keys it by.
type packedFile struct {
	entry *kilnv1.ContextEntry
	key   fileKey
	// sum is the content's sha256, once known.
	sum [sha256.Size]byte
	// links is the file's hard link count.
	links uint64
}

func (f *packedFile) setDigest(sum [sha256.Size]byte) {
	f.sum = sum
	f.entry.Digest = &kilnv1.Digest{Hash: digestString(sum[:]), SizeBytes: f.entry.Size}
}

// emptyDigest is the digest of no bytes, a socket's blob.
var emptyDigest = func() string { sum := sha256.Sum256(nil); return digestString(sum[:]) }()

// digestString formats a sha256 sum the way the farm names blobs.
func digestString(sum []byte) string {
	return "sha256:" + hex.EncodeToString(sum)
}

// packDir is a directory on the walk stack. An ignored directory that the
// walk enters because an exception may re-include something below it is
// listed only once something inside it is.
type packDir struct {
	rel    string
	info   fs.FileInfo
	listed bool
	match  matchState
}

func (p *packer) walk() error {
	err := filepath.WalkDir(p.root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading build context: %w", err)
		}
		if err := p.ctx.Err(); err != nil {
			return err
		}
		if abs == p.root {
			return nil
		}
		r, err := filepath.Rel(p.root, abs)
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(r)
		p.popTo(path.Dir(rel))

		var parent matchState
		if n := len(p.dirs); n > 0 {
			parent = p.dirs[n-1].match
		}
		ignored, state, err := p.ignore.match(rel, parent)
		if err != nil {
			return invalidArgumentf("matching %q against .dockerignore: %v", rel, err)
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("reading build context entry %q: %w", rel, err)
		}

		if d.IsDir() {
			if ignored && !p.ignore.mayIncludeBelow(rel) {
				return filepath.SkipDir
			}
			p.dirs = append(p.dirs, &packDir{rel: rel, info: info, match: state})
			if !ignored {
				return p.listParents()
			}
			return nil
		}
		if ignored {
			return nil
		}
		switch {
		case info.Mode().IsRegular():
			if err := p.listParents(); err != nil {
				return err
			}
			return p.listFile(rel, info)
		case info.Mode()&fs.ModeSymlink != 0:
			if err := p.listParents(); err != nil {
				return err
			}
			return p.listSymlink(abs, rel, info)
		case info.Mode()&fs.ModeSocket != 0:
			if err := p.listParents(); err != nil {
				return err
			}
			return p.listSocket(rel, info)
		default:
			// Devices and pipes cannot be part of an image build.
			return nil
		}
	})
	if err != nil {
		return fmt.Errorf("packing build context %s: %w", p.root, err)
	}
	return nil
}

// popTo drops the directories that are not ancestors of (or equal to) dir.
func (p *packer) popTo(dir string) {
	for n := len(p.dirs); n > 0; n = len(p.dirs) {
		top := p.dirs[n-1].rel
		if dir == top || strings.HasPrefix(dir, top+"/") {
			return
		}
		p.dirs = p.dirs[:n-1]
	}
}

// listParents lists the directories on the stack not yet listed.
func (p *packer) listParents() error {
	for _, d := range p.dirs {
		if d.listed {
			continue
		}
		e, err := baseEntry(d.rel, d.info)
		if err != nil {
			return err
		}
		e.Type = kilnv1.EntryType_ENTRY_TYPE_DIRECTORY
		p.entries = append(p.entries, e)
		p.dirCount++
		d.listed = true
	}
	return nil
}

func (p *packer) listFile(rel string, info fs.FileInfo) error {
	e, err := baseEntry(rel, info)
	if err != nil {
		return err
	}
	e.Type = kilnv1.EntryType_ENTRY_TYPE_FILE
	e.Size = info.Size()
	p.entries = append(p.entries, e)
	p.files = append(p.files, &packedFile{entry: e, key: keyOf(info), links: linkCount(info)})
	return nil
}

// linkHardLinks keeps hard links as links, as docker's and BuildKit's
// contexts do: of the listed files that share an inode, the first in path
// order stays a file and each other one becomes a HARDLINK entry to it,
// with no content of its own (not hashed, not uploaded). It runs once the
// entries are sorted, so a link always follows its target.
func (p *packer) linkHardLinks() {
	slices.SortFunc(p.files, func(a, b *packedFile) int { return strings.Compare(a.entry.Path, b.entry.Path) })
	type inode struct{ dev, ino uint64 }
	first := map[inode]string{}
	files := p.files[:0]
	for _, f := range p.files {
		if f.links < 2 || f.key.ino == 0 {
			files = append(files, f)
			continue
		}
		id := inode{f.key.dev, f.key.ino}
		target, ok := first[id]
		if !ok {
			first[id] = f.entry.Path
			files = append(files, f)
			continue
		}
		f.entry.Type = kilnv1.EntryType_ENTRY_TYPE_HARDLINK
		f.entry.LinkTarget = target
		f.entry.Size = 0
		p.hardLinks++
	}
	clear(p.files[len(files):])
	p.files = files
}

// listSocket lists a unix socket as BuildKit's file sync sends one: an
// empty file with the socket's permission bits, marked so that a classic
// build's tar leaves it out as the docker CLI does. It is never opened: its
// blob, the empty one, is served from memory.
func (p *packer) listSocket(rel string, info fs.FileInfo) error {
	e, err := baseEntry(rel, info)
	if err != nil {
		return err
	}
	e.Type = kilnv1.EntryType_ENTRY_TYPE_FILE
	e.Digest = &kilnv1.Digest{Hash: emptyDigest, SizeBytes: 0}
	e.Socket = true
	p.entries = append(p.entries, e)
	p.sockets = append(p.sockets, e)
	return nil
}

func (p *packer) listSymlink(abs, rel string, info fs.FileInfo) error {
	target, err := os.Readlink(abs)
	if err != nil {
		return fmt.Errorf("reading symlink %q: %w", rel, err)
	}
	e, err := baseEntry(rel, info)
	if err != nil {
		return err
	}
	e.Type = kilnv1.EntryType_ENTRY_TYPE_SYMLINK
	e.LinkTarget = filepath.ToSlash(target)
	p.entries = append(p.entries, e)
	p.symlinks++
	return nil
}

// baseEntry is the part of an entry shared by all types: path, permission
// bits and mtime. It refuses names the farm cannot take, before anything is
// hashed or sent.
func baseEntry(rel string, info fs.FileInfo) (*kilnv1.ContextEntry, error) {
	if err := buildctx.CheckPath(rel, math.MaxInt); err != nil { // the farm enforces its own limits
		return nil, invalidArgumentf("%v: rename it or list it in .dockerignore", err)
	}
	return &kilnv1.ContextEntry{
		Path:      rel,
		Mode:      buildctx.ModeBits(info.Mode()),
		MtimeUnix: info.ModTime().Unix(),
	}, nil
}
