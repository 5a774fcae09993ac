package kiln

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// packer writes the entries of a context directory to a tar.
type packer struct {
	root   string
	ignore *ignoreMatcher
	tw     *tar.Writer
	files  int
	// dirs is the stack of directories above the current walk position.
	dirs []*packDir
}

// packDir is a directory on the walk stack. An ignored directory that the
// walk enters because an exception may re-include something below it is
// written only once something inside it is.
type packDir struct {
	rel     string
	info    fs.FileInfo
	written bool
	match   matchState
}

func (p *packer) walk() error {
	err := filepath.WalkDir(p.root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading build context: %w", err)
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
			dir := &packDir{rel: rel, info: info, match: state}
			p.dirs = append(p.dirs, dir)
			if !ignored {
				return p.writeParents()
			}
			return nil
		}
		if ignored {
			return nil
		}
		switch {
		case info.Mode().IsRegular():
			if err := p.writeParents(); err != nil {
				return err
			}
			return p.writeFile(abs, rel, info)
		case info.Mode()&fs.ModeSymlink != 0:
			if err := p.writeParents(); err != nil {
				return err
			}
			return p.writeSymlink(abs, rel, info)
		default:
			// Sockets, devices and pipes cannot be part of an image build.
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

// writeParents writes the directories on the stack not yet written.
func (p *packer) writeParents() error {
	for _, d := range p.dirs {
		if d.written {
			continue
		}
		hdr := baseHeader(d.rel+"/", d.info)
		hdr.Typeflag = tar.TypeDir
		if err := p.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("writing %q: %w", d.rel, err)
		}
		d.written = true
	}
	return nil
}

func (p *packer) writeFile(abs, rel string, info fs.FileInfo) error {
	f, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("reading %q: %w", rel, err)
	}
	defer f.Close()
	hdr := baseHeader(rel, info)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = info.Size()
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing %q: %w", rel, err)
	}
	n, err := io.CopyN(p.tw, f, info.Size())
	if err == io.EOF || (err == nil && n != info.Size()) {
		return fmt.Errorf("file %q shrank while it was packed; retry when nothing writes to the context", rel)
	}
	if err != nil {
		return fmt.Errorf("writing %q: %w", rel, err)
	}
	p.files++
	return nil
}

func (p *packer) writeSymlink(abs, rel string, info fs.FileInfo) error {
	target, err := os.Readlink(abs)
	if err != nil {
		return fmt.Errorf("reading symlink %q: %w", rel, err)
	}
	hdr := baseHeader(rel, info)
	hdr.Typeflag = tar.TypeSymlink
	hdr.Linkname = filepath.ToSlash(target)
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing %q: %w", rel, err)
	}
	p.files++
	return nil
}

// baseHeader is the owner-free part of a tar header shared by all entries.
func baseHeader(name string, info fs.FileInfo) *tar.Header {
	mode := int64(info.Mode().Perm())
	if info.Mode()&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if info.Mode()&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if info.Mode()&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return &tar.Header{
		Name:    name,
		Mode:    mode,
		ModTime: info.ModTime().Truncate(1e9),
	}
}
