//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package workdir_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/kilnbuild/kiln/agent/workdir"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// t0 is a base mtime for test entries.
const t0 = int64(1_700_000_000)

// memBlobs is an Opener over blobs held in memory; it stands in for the
// agent's local CAS, which holds verified blobs on disk.
type memBlobs struct {
	mu    sync.Mutex
	blobs map[string][]byte
	fail  map[string]error // digests whose Open fails
	opens int
}

func newBlobs() *memBlobs {
	return &memBlobs{blobs: map[string][]byte{}, fail: map[string]error{}}
}

func digestOf(content []byte) string {
	sum := sha256.Sum256(content)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// put stores content and returns its digest.
func (b *memBlobs) put(content []byte) string {
	d := digestOf(content)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blobs[d] = content
	return d
}

func (b *memBlobs) Open(digest string) (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.opens++
	if err := b.fail[digest]; err != nil {
		return nil, err
	}
	data, ok := b.blobs[digest]
	if !ok {
		return nil, fmt.Errorf("no blob %s", digest)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (b *memBlobs) content(digest string) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blobs[digest]
}

// Entry constructors. Files are stored in blobs as they are made.

func file(b *memBlobs, p, content string, mode uint32, mtime int64) *kilnv1.ContextEntry {
	d := b.put([]byte(content))
	return &kilnv1.ContextEntry{
		Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: mode, MtimeUnix: mtime,
		Size: int64(len(content)), Digest: &kilnv1.Digest{Hash: d, SizeBytes: int64(len(content))},
	}
}

func dir(p string, mode uint32, mtime int64) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: mode, MtimeUnix: mtime}
}

func symlink(p, target string, mtime int64) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, Mode: 0o777, LinkTarget: target, MtimeUnix: mtime}
}

func hardlink(p, target string) *kilnv1.ContextEntry {
	return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_HARDLINK, Mode: 0o644, LinkTarget: target, MtimeUnix: t0}
}

// manifest sorts entries by path, as a manifest must be.
func manifest(entries ...*kilnv1.ContextEntry) *kilnv1.ContextManifest {
	es := slices.Clone(entries)
	slices.SortFunc(es, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	return &kilnv1.ContextManifest{Entries: es}
}

// fileMtime is the mtime a file entry must get, computed independently of
// the package: mtime_unix seconds plus the first 8 bytes of its sha256,
// big-endian, modulo 1e9, as nanoseconds.
func fileMtime(e *kilnv1.ContextEntry, content []byte) int64 {
	sum := sha256.Sum256(content)
	return e.MtimeUnix*1e9 + int64(binary.BigEndian.Uint64(sum[:8])%1e9)
}

// withImplied returns m's entries by path, with the directories their
// paths imply but m does not list (mode 0755, the epoch as mtime).
func withImplied(m *kilnv1.ContextManifest) map[string]*kilnv1.ContextEntry {
	want := map[string]*kilnv1.ContextEntry{}
	for _, e := range m.Entries {
		want[e.Path] = e
	}
	for _, e := range m.Entries {
		for d := path.Dir(e.Path); d != "."; d = path.Dir(d) {
			if _, ok := want[d]; !ok {
				want[d] = dir(d, 0o755, 0)
			}
		}
	}
	return want
}

// diskErr says how directory root differs from m: every entry with its
// type, permission bits, content, link target and mtime, and nothing else.
func diskErr(root string, m *kilnv1.ContextManifest, blobs *memBlobs) error {
	want := withImplied(m)
	seen := map[string]bool{}
	var errs []error
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		e := want[rel]
		if e == nil {
			errs = append(errs, fmt.Errorf("%s: on disk, not in the manifest", rel))
			return nil
		}
		if err := entryErr(root, p, e, blobs, want); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rel, err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for p := range want {
		if !seen[p] {
			errs = append(errs, fmt.Errorf("%s: in the manifest, not on disk", p))
		}
	}
	return errors.Join(errs...)
}

func entryErr(root, p string, e *kilnv1.ContextEntry, blobs *memBlobs, want map[string]*kilnv1.ContextEntry) error {
	info, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st := info.Sys().(*syscall.Stat_t)
	perm := uint32(st.Mode) & 0o7777
	mtime := info.ModTime().UnixNano()
	switch e.Type {
	case kilnv1.EntryType_ENTRY_TYPE_FILE:
		content := blobs.content(e.Digest.Hash)
		if !info.Mode().IsRegular() {
			return fmt.Errorf("is %v, want a regular file", info.Mode().Type())
		}
		if perm&0o400 != 0 || os.Geteuid() == 0 { // else unreadable by its owner
			got, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, content) {
				return fmt.Errorf("content %q, want %q", got, content)
			}
		}
		if perm != e.Mode {
			return fmt.Errorf("mode %#o, want %#o", perm, e.Mode)
		}
		if w := fileMtime(e, content); mtime != w {
			return fmt.Errorf("mtime %d, want %d", mtime, w)
		}
	case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
		if !info.IsDir() {
			return fmt.Errorf("is %v, want a directory", info.Mode().Type())
		}
		if perm != e.Mode {
			return fmt.Errorf("mode %#o, want %#o", perm, e.Mode)
		}
		if w := e.MtimeUnix * 1e9; mtime != w {
			return fmt.Errorf("mtime %d, want %d", mtime, w)
		}
	case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
		if info.Mode().Type() != fs.ModeSymlink {
			return fmt.Errorf("is %v, want a symlink", info.Mode().Type())
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if target != e.LinkTarget {
			return fmt.Errorf("target %q, want %q", target, e.LinkTarget)
		}
		if w := e.MtimeUnix * 1e9; mtime != w {
			return fmt.Errorf("mtime %d, want %d", mtime, w)
		}
	case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
		tinfo, err := os.Lstat(filepath.Join(root, filepath.FromSlash(e.LinkTarget)))
		if err != nil {
			return err
		}
		if !os.SameFile(info, tinfo) {
			return fmt.Errorf("is not the same file as %q", e.LinkTarget)
		}
		if want[e.LinkTarget] == nil {
			return fmt.Errorf("links to %q, not in the manifest", e.LinkTarget)
		}
	}
	return nil
}

func checkDisk(t *testing.T, root string, m *kilnv1.ContextManifest, blobs *memBlobs) {
	t.Helper()
	if err := diskErr(root, m, blobs); err != nil {
		t.Errorf("directory %s differs from its manifest:\n%v", root, err)
	}
}

// stat is what fsutil compares (and the inode, which says a file was not
// rewritten).
type stat struct {
	ino   uint64
	mode  uint32
	size  int64
	mtime int64
	link  string
}

// snapshot returns the stats of everything under root, by relative path.
func snapshot(t *testing.T, root string) map[string]stat {
	t.Helper()
	out := map[string]stat{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		s := stat{ino: st.Ino, mode: uint32(st.Mode), size: info.Size(), mtime: info.ModTime().UnixNano()}
		if info.Mode().Type() == fs.ModeSymlink {
			s.link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// openStore opens a store in a new temporary directory.
func openStore(t *testing.T, maxBytes int64) (*workdir.Store, string) {
	t.Helper()
	root := t.TempDir()
	return reopen(t, root, maxBytes), root
}

// reopen opens the store in root, closed at the end of the test.
func reopen(t *testing.T, root string, maxBytes int64) *workdir.Store {
	t.Helper()
	s, err := workdir.Open(workdir.Config{Dir: root, MaxBytes: maxBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// t.TempDir's RemoveAll, which runs after, cannot empty read-only
	// directories as a user other than root.
	t.Cleanup(func() {
		filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				os.Chmod(p, 0o700)
			}
			return nil
		})
	})
	return s
}

// materialize is Materialize that must succeed; the Dir is released at the
// end of the test if the test has not.
func materialize(t *testing.T, s *workdir.Store, key string, m *kilnv1.ContextManifest, blobs workdir.Opener) (*workdir.Dir, workdir.Stats) {
	t.Helper()
	d, st, err := s.Materialize(t.Context(), key, m, blobs)
	if err != nil {
		t.Fatalf("Materialize(%q): %v", key, err)
	}
	t.Cleanup(d.Release)
	return d, st
}

// names lists the directory, sorted.
func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}
