//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package workdir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// dirFlags open a directory and never a symlink to one.
const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// tree reaches the directories of one context directory by relative path,
// one element at a time from the directory's descriptor, never following a
// symlink: whatever is on disk, nothing is written outside. It keeps the
// chain of directories it opened last, since consecutive entries share
// their parents. A tree is used by one goroutine.
type tree struct {
	root  int             // the context directory
	names []string        // path elements of the open chain
	fds   []int           // fds[i] is the directory names[:i+1]
	dirty map[string]bool // directories whose mode and mtime must be set again
}

func newTree(root int, dirty map[string]bool) *tree {
	return &tree{root: root, dirty: dirty}
}

// close closes the directories the tree holds open.
func (t *tree) close() { t.truncate(0) }

func (t *tree) truncate(n int) {
	for _, fd := range t.fds[n:] {
		unix.Close(fd)
	}
	t.names, t.fds = t.names[:n], t.fds[:n]
}

// dir returns a descriptor of directory p ("" is the context directory),
// valid until the next call. Every directory on the way is made
// searchable and writable by its owner (and marked dirty, to get its mode
// back), since materializing writes into it as a user that may not be root.
func (t *tree) dir(p string) (int, error) {
	var elems []string
	if p != "" {
		elems = strings.Split(p, "/")
	}
	n := 0
	for n < len(t.names) && n < len(elems) && t.names[n] == elems[n] {
		n++
	}
	t.truncate(n)
	for i := n; i < len(elems); i++ {
		parent := t.root
		if i > 0 {
			parent = t.fds[i-1]
		}
		fd, err := t.openDir(parent, strings.Join(elems[:i+1], "/"), elems[i])
		if err != nil {
			return -1, err
		}
		t.names, t.fds = append(t.names, elems[i]), append(t.fds, fd)
	}
	if len(t.fds) == 0 {
		return t.root, nil
	}
	return t.fds[len(t.fds)-1], nil
}

// parent returns a descriptor of the directory holding p, and p's name in it.
func (t *tree) parent(p string) (int, string, error) {
	dir, name := path.Split(p)
	fd, err := t.dir(strings.TrimSuffix(dir, "/"))
	return fd, name, err
}

// openDir opens the directory name in parent, rel being its path in the
// context directory.
func (t *tree) openDir(parent int, rel, name string) (int, error) {
	fd, err := unix.Openat(parent, name, dirFlags, 0)
	if err == unix.EACCES {
		if err := chmodDir(parent, name, rel); err != nil {
			return -1, err
		}
		t.dirty[rel] = true
		fd, err = unix.Openat(parent, name, dirFlags, 0)
	}
	if err != nil {
		if isDir, serr := isDirAt(parent, name); serr == nil && !isDir {
			return -1, fmt.Errorf("context path %q %w", rel, ErrNotDirectory)
		}
		return -1, fmt.Errorf("open context directory %q: %w", rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat context directory %q: %w", rel, err)
	}
	if mode := uint32(st.Mode); mode&0o700 != 0o700 {
		if err := unix.Fchmod(fd, mode&0o7777|0o700); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("open context directory %q to its owner: %w", rel, err)
		}
		t.dirty[rel] = true
	}
	return fd, nil
}

// isDirAt reports whether name in dirfd is a directory, not following a
// symlink.
func isDirAt(dirfd int, name string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, err
	}
	return uint32(st.Mode)&unix.S_IFMT == unix.S_IFDIR, nil
}

// chmodDir gives directory name in dirfd mode 0700, so that its owner can
// open it. Only a directory is changed: fchmodat follows symlinks.
func chmodDir(dirfd int, name, rel string) error {
	isDir, err := isDirAt(dirfd, name)
	if err != nil {
		return fmt.Errorf("stat context directory %q: %w", rel, err)
	}
	if !isDir {
		return fmt.Errorf("context path %q %w", rel, ErrNotDirectory)
	}
	if err := unix.Fchmodat(dirfd, name, 0o700, 0); err != nil {
		return fmt.Errorf("open context directory %q to its owner: %w", rel, err)
	}
	return nil
}

// removeAt deletes name in dirfd and, if it is a directory, everything in
// it, whatever their modes, without following symlinks.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	// Linux says EISDIR for a directory; macOS and the BSDs say EPERM.
	if err != unix.EISDIR && err != unix.EPERM {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	if isDir, serr := isDirAt(dirfd, name); serr != nil || !isDir {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	// Entries a readdir missed while others were deleted leave the
	// directory not empty: read it again.
	for range 3 {
		if err := emptyDir(dirfd, name); err != nil {
			return err
		}
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		if err != unix.ENOTEMPTY && err != unix.EEXIST {
			break
		}
	}
	if err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "rmdir", Path: name, Err: err}
	}
	return nil
}

// emptyDir deletes everything in directory name of dirfd, first giving it
// mode 0700: its entries can be deleted whatever its mode was (0555…).
func emptyDir(dirfd int, name string) error {
	fd, err := unix.Openat(dirfd, name, dirFlags, 0)
	if err == unix.EACCES {
		if err := unix.Fchmodat(dirfd, name, 0o700, 0); err != nil {
			return &os.PathError{Op: "chmod", Path: name, Err: err}
		}
		fd, err = unix.Openat(dirfd, name, dirFlags, 0)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name) // closes fd
	defer f.Close()
	if err := unix.Fchmod(fd, 0o700); err != nil {
		return &os.PathError{Op: "chmod", Path: name, Err: err}
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			return fmt.Errorf("in %s: %w", name, err)
		}
	}
	return nil
}

// setTimes sets the atime and mtime of name in dirfd to ns, on a symlink
// itself rather than its target.
func setTimes(dirfd int, name string, ns int64) error {
	ts := unix.NsecToTimespec(ns)
	return unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// retryExist runs mk, and once more after deleting what is in its way if
// that already exists: the record did not know it, so it is not trusted.
func retryExist(dirfd int, name string, mk func() error) error {
	err := mk()
	if err != unix.EEXIST {
		return err
	}
	if err := removeAt(dirfd, name); err != nil {
		return err
	}
	return mk()
}

// writer writes the entries of one context directory.
type writer struct {
	ctx   context.Context
	t     *tree // parents of the entries written
	links *tree // parents of hard link targets
	blobs Opener
	buf   []byte
}

// writeEntry creates e, which does not exist, as name in dirfd. It returns
// the file bytes written.
func (w *writer) writeEntry(dirfd int, name string, e *kilnv1.ContextEntry) (int64, error) {
	switch e.Type {
	case kilnv1.EntryType_ENTRY_TYPE_FILE:
		return w.writeFile(dirfd, name, e)
	case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
		err := retryExist(dirfd, name, func() error { return unix.Mkdirat(dirfd, name, 0o700) })
		if err != nil {
			return 0, fmt.Errorf("context entry %q: mkdir: %w", e.Path, err)
		}
		w.t.dirty[e.Path] = true // mode and mtime are set once its entries are written
		return 0, nil
	case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
		err := retryExist(dirfd, name, func() error { return unix.Symlinkat(e.LinkTarget, dirfd, name) })
		if err != nil {
			return 0, fmt.Errorf("context entry %q: symlink: %w", e.Path, err)
		}
		if err := setTimes(dirfd, name, mtime(e)); err != nil {
			return 0, fmt.Errorf("context entry %q: set mtime: %w", e.Path, err)
		}
		return 0, nil
	case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
		tfd, tname, err := w.links.parent(e.LinkTarget)
		if err != nil {
			return 0, fmt.Errorf("context entry %q: hard link target: %w", e.Path, err)
		}
		// Without AT_SYMLINK_FOLLOW, linkat links a symlink itself.
		err = retryExist(dirfd, name, func() error { return unix.Linkat(tfd, tname, dirfd, name, 0) })
		if err != nil {
			return 0, fmt.Errorf("context entry %q: hard link to %q: %w", e.Path, e.LinkTarget, err)
		}
		return 0, nil
	default:
		return 0, fmt.Errorf("context entry %q has entry type %s, which cannot be written", e.Path, e.Type)
	}
}

// writeFile creates file e as name in dirfd from its blob, checked against
// the entry's size and digest, then sets its mode and mtime.
func (w *writer) writeFile(dirfd int, name string, e *kilnv1.ContextEntry) (int64, error) {
	r, err := w.blobs.Open(e.Digest.Hash)
	if err != nil {
		return 0, fmt.Errorf("context entry %q: open blob: %w", e.Path, err)
	}
	defer r.Close()
	var fd int
	err = retryExist(dirfd, name, func() error {
		var err error
		// O_EXCL with O_CREAT never follows a symlink; O_NOFOLLOW says so again.
		fd, err = unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("context entry %q: create: %w", e.Path, err)
	}
	f := os.NewFile(uintptr(fd), e.Path)
	defer f.Close()
	h := sha256.New()
	src := io.LimitReader(ctxReader{w.ctx, r}, e.Size+1) // one byte more tells a longer blob
	// The struct hides f's ReadFrom, so that buf is used.
	n, err := io.CopyBuffer(struct{ io.Writer }{io.MultiWriter(f, h)}, src, w.buf)
	if err != nil {
		return n, fmt.Errorf("context entry %q: copy blob %s: %w", e.Path, e.Digest.Hash, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != e.Size || got != e.Digest.Hash {
		return n, fmt.Errorf("context entry %q: %w: blob %s has %d bytes with digest %s, the entry %d bytes",
			e.Path, ErrBlobMismatch, e.Digest.Hash, n, got, e.Size)
	}
	// After the write, which would clear setuid and setgid bits.
	if err := unix.Fchmod(fd, e.Mode&0o7777); err != nil {
		return n, fmt.Errorf("context entry %q: chmod: %w", e.Path, err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("context entry %q: %w", e.Path, err)
	}
	if err := setTimes(dirfd, name, mtime(e)); err != nil {
		return n, fmt.Errorf("context entry %q: set mtime: %w", e.Path, err)
	}
	return n, nil
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// apply makes directory root, which holds the old context of p, hold the
// new one.
func apply(ctx context.Context, root int, p *plan, blobs Opener, st *Stats) error {
	dirty := map[string]bool{}
	t := newTree(root, dirty)
	defer t.close()
	w := &writer{ctx: ctx, t: t, links: newTree(root, dirty), blobs: blobs, buf: make([]byte, 256<<10)}
	defer w.links.close()
	files := newFileWrites(ctx, blobs)
	defer files.wait() // no write outlives apply

	for _, r := range p.remove {
		dirfd, name, err := t.parent(r)
		if err != nil {
			return err
		}
		if err := removeAt(dirfd, name); err != nil {
			return fmt.Errorf("remove context entry %q: %w", r, err)
		}
		dirty[parentOf(r)] = true
	}
	st.Removed = p.removed

	for i, e := range p.entries {
		switch p.actions[i] {
		case keep:
			st.Kept++
			continue
		case restat:
			dirty[e.Path] = true
			st.Written++
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		dirfd, name, err := t.parent(e.Path)
		if err != nil {
			return fmt.Errorf("context entry %q: %w", e.Path, err)
		}
		if p.actions[i] == replace {
			if err := removeAt(dirfd, name); err != nil {
				return fmt.Errorf("replace context entry %q: %w", e.Path, err)
			}
		}
		dirty[parentOf(e.Path)] = true
		st.Written++
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			if err := files.start(dirfd, name, e); err != nil {
				return err
			}
			continue
		}
		// A hard link's target may be a file still being written.
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_HARDLINK {
			if err := files.wait(); err != nil {
				return err
			}
		}
		n, err := w.writeEntry(dirfd, name, e)
		if err != nil {
			return err
		}
		st.WrittenBytes += n
	}
	if err := files.wait(); err != nil {
		return err
	}
	st.WrittenBytes += files.written()

	// Directories last, deepest first: writing into a directory changes
	// its mtime, and its mode may forbid writing into it.
	for i := len(p.entries) - 1; i >= 0; i-- {
		e := p.entries[i]
		if e.Type != kilnv1.EntryType_ENTRY_TYPE_DIRECTORY || !dirty[e.Path] {
			continue
		}
		fd, err := t.dir(e.Path)
		if err != nil {
			return fmt.Errorf("context entry %q: %w", e.Path, err)
		}
		if err := unix.Fchmod(fd, e.Mode&0o7777); err != nil {
			return fmt.Errorf("context entry %q: chmod: %w", e.Path, err)
		}
		dirfd, name, err := t.parent(e.Path)
		if err != nil {
			return fmt.Errorf("context entry %q: %w", e.Path, err)
		}
		if err := setTimes(dirfd, name, mtime(e)); err != nil {
			return fmt.Errorf("context entry %q: set mtime: %w", e.Path, err)
		}
	}
	return nil
}

// parentOf is the directory holding p, "" for the context directory.
func parentOf(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}
