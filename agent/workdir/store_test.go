//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package workdir_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/workdir"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

// baseContext is the context the diff cases start from, unless they say.
func baseContext(b *memBlobs) []*kilnv1.ContextEntry {
	return []*kilnv1.ContextEntry{
		dir("src", 0o755, t0),
		file(b, "src/a.go", "package a", 0o644, t0+1),
		file(b, "src/b.go", "package b", 0o644, t0+1),
		file(b, "README", "hello", 0o644, t0+2),
		symlink("link", "src/a.go", t0+3),
		file(b, "run.sh", "#!/bin/sh", 0o755, t0+2),
	}
}

// without returns es without the entries at paths.
func without(es []*kilnv1.ContextEntry, paths ...string) []*kilnv1.ContextEntry {
	return slices.DeleteFunc(slices.Clone(es), func(e *kilnv1.ContextEntry) bool { return slices.Contains(paths, e.Path) })
}

// with returns es with the entries of more replacing those at their paths.
func with(es []*kilnv1.ContextEntry, more ...*kilnv1.ContextEntry) []*kilnv1.ContextEntry {
	for _, e := range more {
		es = without(es, e.Path)
	}
	return append(es, more...)
}

func TestMaterializeDiff(t *testing.T) {
	b := newBlobs()
	base := baseContext(b)
	for _, tc := range []struct {
		name          string
		before, after []*kilnv1.ContextEntry // before: base if nil
		written       int
		removed       int
		writtenBytes  int64
		changed       []string // paths whose stats may differ afterwards
	}{
		{name: "unchanged", after: base},
		{
			name:         "content changed at the same size and second",
			after:        with(base, file(b, "src/a.go", "package A", 0o644, t0+1)),
			written:      1,
			writtenBytes: 9,
			changed:      []string{"src/a.go"},
		},
		{
			name:         "mtime second changed",
			after:        with(base, file(b, "README", "hello", 0o644, t0+10)),
			written:      1,
			writtenBytes: 5,
			changed:      []string{"README"},
		},
		{
			name:         "mode changed",
			after:        with(base, file(b, "run.sh", "#!/bin/sh", 0o700, t0+2)),
			written:      1,
			writtenBytes: 9,
			changed:      []string{"run.sh"},
		},
		{name: "file removed", after: without(base, "src/b.go"), removed: 1},
		{name: "directory removed with its files", after: without(base, "src", "src/a.go", "src/b.go"), removed: 3},
		{
			name:    "file added in a new directory",
			after:   with(base, dir("docs", 0o750, t0+5), file(b, "docs/x.md", "# x", 0o600, t0+5)),
			written: 2, writtenBytes: 3,
		},
		{
			name:    "file added under directories the manifest implies",
			after:   with(base, file(b, "deep/er/f", "f", 0o644, t0)),
			written: 3, writtenBytes: 1,
		},
		{
			name:    "file becomes a directory",
			after:   with(without(base, "README"), dir("README", 0o755, t0+6), file(b, "README/x", "x", 0o644, t0+6)),
			written: 2, writtenBytes: 1,
			changed: []string{"README"},
		},
		{
			name:    "directory becomes a symlink",
			after:   with(without(base, "src/a.go", "src/b.go"), symlink("src", "elsewhere", t0+7)),
			written: 1, removed: 2,
			changed: []string{"src"},
		},
		{
			name:    "symlink becomes a file",
			after:   with(base, file(b, "link", "now a file", 0o644, t0+3)),
			written: 1, writtenBytes: 10,
			changed: []string{"link"},
		},
		{
			name:    "symlink target changed",
			after:   with(base, symlink("link", "src/b.go", t0+3)),
			written: 1,
			changed: []string{"link"},
		},
		{
			name:    "directory mode and mtime changed",
			after:   with(base, dir("src", 0o750, t0+9)),
			written: 1,
			changed: []string{"src"},
		},
		{
			name:    "hard link added",
			after:   with(base, hardlink("hl", "README")),
			written: 1,
		},
		{
			name:         "hard link follows its rewritten target",
			before:       with(base, hardlink("hl", "README")),
			after:        with(base, hardlink("hl", "README"), file(b, "README", "HELLO", 0o644, t0+2)),
			written:      2,
			writtenBytes: 5,
			changed:      []string{"README", "hl"},
		},
		{
			name:    "file becomes a hard link",
			after:   with(base, hardlink("src/b.go", "src/a.go")),
			written: 1,
			changed: []string{"src/b.go"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.before
			if before == nil {
				before = base
			}
			s, _ := openStore(t, 0)
			m1, m2 := manifest(before...), manifest(tc.after...)

			d1, st1 := materialize(t, s, "lineage", m1, b)
			if !st1.Fresh || st1.Kept != 0 || st1.Removed != 0 {
				t.Errorf("first Materialize: %+v, want a fresh directory with everything written", st1)
			}
			checkDisk(t, d1.Path(), m1, b)
			snap1 := snapshot(t, d1.Path())
			d1.Release()

			d2, st := materialize(t, s, "lineage", m2, b)
			if d2.Slot() != d1.Slot() || d2.Path() != d1.Path() {
				t.Errorf("second Materialize got slot %s, want the released %s", d2.Slot(), d1.Slot())
			}
			entries := len(withImplied(m2))
			want := workdir.Stats{
				Written: tc.written, Kept: entries - tc.written, Removed: tc.removed,
				WrittenBytes: tc.writtenBytes, TotalBytes: st.TotalBytes,
			}
			if st != want {
				t.Errorf("Stats = %+v, want %+v", st, want)
			}
			checkDisk(t, d2.Path(), m2, b)
			snap2 := snapshot(t, d2.Path())
			for p, s1 := range snap1 {
				s2, ok := snap2[p]
				if !ok || slices.Contains(tc.changed, p) {
					continue
				}
				if s1 != s2 {
					t.Errorf("%s was to be kept as it was: stat %+v, then %+v", p, s1, s2)
				}
			}
		})
	}
}

// A changed file gets another mtime even though its size and mtime_unix
// stay: that is what makes fsutil send it.
func TestMaterializeContentChangeChangesMtime(t *testing.T) {
	b := newBlobs()
	s, _ := openStore(t, 0)
	m1 := manifest(file(b, "f", "aaaa", 0o644, t0), file(b, "g", "aaaa", 0o644, t0))
	d, _ := materialize(t, s, "k", m1, b)
	before := snapshot(t, d.Path())
	d.Release()
	m2 := manifest(file(b, "f", "bbbb", 0o644, t0), file(b, "g", "aaaa", 0o644, t0))
	d, st := materialize(t, s, "k", m2, b)
	after := snapshot(t, d.Path())
	if st.Written != 1 {
		t.Errorf("Written = %d, want 1", st.Written)
	}
	if before["f"].mtime == after["f"].mtime {
		t.Errorf("f changed content but kept mtime %d", after["f"].mtime)
	}
	if before["f"].mtime/1e9 != after["f"].mtime/1e9 || after["f"].size != before["f"].size {
		t.Errorf("f: second or size changed: %+v, then %+v", before["f"], after["f"])
	}
	if want := fileMtime(m2.Entries[0], []byte("bbbb")); after["f"].mtime != want {
		t.Errorf("f's mtime %d, want %d from its new content", after["f"].mtime, want)
	}
	if before["g"] != after["g"] {
		t.Errorf("g was rewritten: %+v, then %+v", before["g"], after["g"])
	}
}

func TestMaterializeModes(t *testing.T) {
	old := syscall.Umask(0o077) // modes must not depend on the umask
	defer syscall.Umask(old)
	b := newBlobs()
	s, root := openStore(t, 0)
	m1 := manifest(
		file(b, "all", "x", 0o777, t0),
		file(b, "ro", "read only", 0o444, t0),
		file(b, "none", "no access", 0o000, t0),
		file(b, "suid", "setuid", 0o4755, t0),
		dir("rodir", 0o555, t0+1),
		file(b, "rodir/f", "in a read-only dir", 0o444, t0),
		dir("rodir/sub", 0o500, t0+2),
		file(b, "rodir/sub/g", "deeper", 0o400, t0),
		dir("sticky", 0o1777, t0+3),
		dir("private", 0o700, t0+4),
	)
	d, _ := materialize(t, s, "modes", m1, b)
	checkDisk(t, d.Path(), m1, b)
	d.Release()

	// Writing into and removing from read-only directories.
	m2 := manifest(
		file(b, "all", "x", 0o777, t0),
		dir("rodir", 0o555, t0+1),
		file(b, "rodir/f", "in a read-only dir", 0o444, t0),
		file(b, "rodir/new", "added", 0o444, t0),
		dir("rodir/sub", 0o500, t0+2),
		dir("sticky", 0o1777, t0+3),
	)
	d, st := materialize(t, s, "modes", m2, b)
	if st.Written != 1 || st.Removed != 5 {
		t.Errorf("Stats = %+v, want 1 written, 5 removed", st)
	}
	checkDisk(t, d.Path(), m2, b)
	d.Release()

	// A read-only tree goes when it is no longer in the context…
	m3 := manifest(file(b, "all", "x", 0o777, t0))
	d, _ = materialize(t, s, "modes", m3, b)
	checkDisk(t, d.Path(), m3, b)
	d.Release()

	// …and when its directory is evicted.
	d, _ = materialize(t, s, "modes", m1, b)
	d.Release()
	s.Close()
	s = reopen(t, root, 1)
	if n, _ := s.Usage(); n != 0 {
		t.Errorf("%d directories left after eviction, want 0", n)
	}
	if got := names(t, root); !slices.Equal(got, []string{"lock", "trash"}) {
		t.Errorf("store holds %v after eviction", got)
	}
}

func TestMaterializeSlots(t *testing.T) {
	b := newBlobs()
	s, root := openStore(t, 0)
	m := manifest(file(b, "f", "content", 0o644, t0))

	d1, _ := materialize(t, s, "k", m, b)
	d2, st2 := materialize(t, s, "k", m, b)
	if !regexp.MustCompile(`^[0-9a-f]{16}-0$`).MatchString(d1.Slot()) {
		t.Errorf("first slot %q, want <16 hex>-0", d1.Slot())
	}
	if want := strings.TrimSuffix(d1.Slot(), "0") + "1"; d2.Slot() != want {
		t.Errorf("second slot while the first is pinned: %q, want %q", d2.Slot(), want)
	}
	if !st2.Fresh {
		t.Errorf("a new slot was not written from empty: %+v", st2)
	}
	for _, d := range []*workdir.Dir{d1, d2} {
		if !filepath.IsAbs(d.Path()) || filepath.Dir(d.Path()) != root || filepath.Base(d.Path()) != d.Slot() {
			t.Errorf("Path %q of slot %q is not root/slot", d.Path(), d.Slot())
		}
		checkDisk(t, d.Path(), m, b)
	}
	other, _ := materialize(t, s, "other key", m, b)
	if other.Slot()[:16] == d1.Slot()[:16] || !strings.HasSuffix(other.Slot(), "-0") {
		t.Errorf("another key got slot %q", other.Slot())
	}

	// A pinned directory is not modified.
	pinned := snapshot(t, d2.Path())
	d1.Release()
	d1.Release() // idempotent
	m2 := manifest(file(b, "f", "changed", 0o644, t0))
	d3, st3 := materialize(t, s, "k", m2, b)
	if d3.Slot() != d1.Slot() || st3.Written != 1 || st3.Fresh {
		t.Errorf("after releasing slot 0: slot %q, %+v; want slot %q rewritten in place", d3.Slot(), st3, d1.Slot())
	}
	if got := snapshot(t, d2.Path()); fmt.Sprint(got) != fmt.Sprint(pinned) {
		t.Errorf("pinned directory changed: %v, then %v", pinned, got)
	}
	checkDisk(t, d2.Path(), m, b)

	// The lowest free slot is taken.
	d2.Release()
	d4, st4 := materialize(t, s, "k", m, b)
	if d4.Slot() != d2.Slot() || st4.Written != 0 {
		t.Errorf("got slot %q (%+v), want the released %q unchanged", d4.Slot(), st4, d2.Slot())
	}
	d3.Release()
	d4.Release()
	if d5, _ := materialize(t, s, "k", m, b); d5.Slot() != d1.Slot() {
		t.Errorf("with slots 0 and 1 free got %q, want the lowest, %q", d5.Slot(), d1.Slot())
	}
	var nilDir *workdir.Dir
	nilDir.Release()
}

// Builds of one key at once each get a directory of their own, which
// holds their context until they release it.
func TestMaterializeConcurrent(t *testing.T) {
	b := newBlobs()
	s, _ := openStore(t, 0)
	var ms []*kilnv1.ContextManifest
	for i := range 4 {
		ms = append(ms, manifest(
			dir("d", 0o755, t0),
			file(b, "d/shared", "same in all", 0o644, t0),
			file(b, "d/own", fmt.Sprintf("variant %d", i), 0o644, t0+int64(i)),
			file(b, fmt.Sprintf("only-%d", i), "x", 0o600, t0),
		))
	}
	var (
		mu   sync.Mutex
		held = map[string]bool{}
		wg   sync.WaitGroup
	)
	for g := range 6 {
		wg.Go(func() {
			for i := range 8 {
				m := ms[(g+i)%len(ms)]
				d, _, err := s.Materialize(t.Context(), "shared lineage", m, b)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if held[d.Slot()] {
					t.Errorf("slot %s handed out twice at once", d.Slot())
				}
				held[d.Slot()] = true
				mu.Unlock()
				if err := diskErr(d.Path(), m, b); err != nil {
					t.Errorf("slot %s: %v", d.Slot(), err)
				}
				mu.Lock()
				delete(held, d.Slot())
				mu.Unlock()
				d.Release()
			}
		})
	}
	wg.Wait()
	if n, _ := s.Usage(); n > 6 {
		t.Errorf("%d directories for 6 concurrent builds", n)
	}
}

func TestEviction(t *testing.T) {
	b := newBlobs()
	ctx100 := func(tag string) *kilnv1.ContextManifest {
		return manifest(file(b, "f", tag+strings.Repeat(".", 100-len(tag)), 0o644, t0))
	}
	exists := func(d *workdir.Dir) bool {
		_, err := os.Lstat(d.Path())
		return err == nil
	}

	t.Run("least recently used first", func(t *testing.T) {
		s, root := openStore(t, 250)
		a, _ := materialize(t, s, "a", ctx100("a"), b)
		a.Release()
		bb, _ := materialize(t, s, "b", ctx100("b"), b)
		bb.Release()
		c, st := materialize(t, s, "c", ctx100("c"), b)
		c.Release()
		if st.Evicted != 1 || st.OverBound || exists(a) || !exists(bb) || !exists(c) {
			t.Errorf("after c: %+v; a %v, b %v, c %v on disk; want a evicted", st, exists(a), exists(bb), exists(c))
		}
		if n, size := s.Usage(); n != 2 || size != 200 {
			t.Errorf("Usage = %d dirs, %d bytes; want 2, 200", n, size)
		}
		bb, _ = materialize(t, s, "b", ctx100("b"), b) // b is now more recent than c
		bb.Release()
		d, st := materialize(t, s, "d", ctx100("d"), b)
		d.Release()
		if st.Evicted != 1 || exists(c) || !exists(bb) || !exists(d) {
			t.Errorf("after d: %+v; b %v, c %v, d %v on disk; want c evicted", st, exists(bb), exists(c), exists(d))
		}
		if got := names(t, filepath.Join(root, "trash")); len(got) != 0 {
			t.Errorf("trash holds %v", got)
		}
		for _, name := range []string{a.Slot(), c.Slot()} {
			if _, err := os.Lstat(filepath.Join(root, name+".record")); err == nil {
				t.Errorf("the record of evicted %s is left", name)
			}
		}
	})

	t.Run("pinned directories stay", func(t *testing.T) {
		s, _ := openStore(t, 150)
		a, _ := materialize(t, s, "a", ctx100("a"), b)
		bb, st := materialize(t, s, "b", ctx100("b"), b)
		if st.Evicted != 0 || !st.OverBound || !exists(a) || !exists(bb) {
			t.Errorf("both pinned: %+v; a %v, b %v on disk; want both, over the bound", st, exists(a), exists(bb))
		}
		a.Release() // unpinned and least recently used: evicted now
		if exists(a) || !exists(bb) {
			t.Errorf("after releasing a: a %v, b %v on disk; want a evicted", exists(a), exists(bb))
		}
		checkDisk(t, bb.Path(), ctx100("b"), b)
	})

	t.Run("a context over the bound", func(t *testing.T) {
		s, _ := openStore(t, 50)
		m := ctx100("big")
		d, st := materialize(t, s, "big", m, b)
		if !st.OverBound || st.TotalBytes != 100 {
			t.Errorf("Stats = %+v, want OverBound with 100 bytes", st)
		}
		checkDisk(t, d.Path(), m, b)
		d.Release()
		if exists(d) {
			t.Errorf("released directory over the bound is kept")
		}
	})
}

func TestRestart(t *testing.T) {
	b := newBlobs()
	root := t.TempDir()
	m := manifest(dir("d", 0o555, t0), file(b, "d/f", "content", 0o444, t0), symlink("l", "d/f", t0), hardlink("h", "d/f"))

	s := reopen(t, root, 0)
	d, _ := materialize(t, s, "k", m, b)
	before := snapshot(t, d.Path())
	d.Release()
	if _, err := workdir.Open(workdir.Config{Dir: root}); err == nil {
		t.Errorf("a second store opened the same directory")
	}
	s.Close()

	s = reopen(t, root, 0)
	if n, size := s.Usage(); n != 1 || size != 7 {
		t.Errorf("after restart: %d dirs, %d bytes; want 1, 7", n, size)
	}
	opens := b.opens
	d2, st := materialize(t, s, "k", m, b)
	if d2.Slot() != d.Slot() || st.Written != 0 || st.Fresh || b.opens != opens {
		t.Errorf("after restart: slot %q, %+v, %d blobs opened; want %q with nothing written", d2.Slot(), st, b.opens-opens, d.Slot())
	}
	if after := snapshot(t, d2.Path()); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("stats changed across the restart: %v, then %v", before, after)
	}
}

// The least recently used order survives a restart, through the records'
// mtimes.
func TestRestartEvictsLeastRecentlyUsed(t *testing.T) {
	b := newBlobs()
	root := t.TempDir()
	s := reopen(t, root, 0)
	m := manifest(file(b, "f", strings.Repeat("x", 100), 0o644, t0))
	older, _ := materialize(t, s, "older", m, b)
	newer, _ := materialize(t, s, "newer", m, b)
	older.Release()
	newer.Release()
	s.Close()
	for name, sec := range map[string]int64{older.Slot(): 1000, newer.Slot(): 2000} {
		tm := time.Unix(sec, 0)
		if err := os.Chtimes(filepath.Join(root, name+".record"), tm, tm); err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, root, 150)
	if _, err := os.Lstat(older.Path()); err == nil {
		t.Errorf("the older directory was kept")
	}
	if _, err := os.Lstat(newer.Path()); err != nil {
		t.Errorf("the newer directory was evicted: %v", err)
	}
}

func TestCrashSafety(t *testing.T) {
	b := newBlobs()
	m := manifest(dir("d", 0o755, t0), file(b, "d/a", "aaa", 0o644, t0), file(b, "d/b", "bbb", 0o644, t0))
	m2 := manifest(dir("d", 0o755, t0), file(b, "d/a", "AAA", 0o644, t0), file(b, "d/b", "bbb", 0o644, t0), file(b, "d/c", "ccc", 0o644, t0))
	all := len(m.Entries)

	damage := map[string]func(t *testing.T, record string){
		"record deleted": func(t *testing.T, record string) {
			if err := os.Remove(record); err != nil {
				t.Fatal(err)
			}
		},
		"record corrupted": func(t *testing.T, record string) {
			data, err := os.ReadFile(record)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)-1] ^= 0xff
			if err := os.WriteFile(record, data, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"record truncated": func(t *testing.T, record string) {
			if err := os.Truncate(record, 10); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, spoil := range damage {
		t.Run(name, func(t *testing.T) {
			s, root := openStore(t, 0)
			d, _ := materialize(t, s, "k", m, b)
			d.Release()
			// Something the record does not know of must not survive.
			if err := os.WriteFile(filepath.Join(d.Path(), "stray"), []byte("?"), 0o644); err != nil {
				t.Fatal(err)
			}
			spoil(t, filepath.Join(root, d.Slot()+".record"))
			d, st := materialize(t, s, "k", m, b)
			if !st.Fresh || st.Written != all || st.Kept != 0 {
				t.Errorf("Stats = %+v, want every entry written anew", st)
			}
			checkDisk(t, d.Path(), m, b)
		})
		t.Run(name+" across a restart", func(t *testing.T) {
			s, root := openStore(t, 0)
			d, _ := materialize(t, s, "k", m, b)
			d.Release()
			s.Close()
			spoil(t, filepath.Join(root, d.Slot()+".record"))
			s = reopen(t, root, 0)
			if n, _ := s.Usage(); n != 0 {
				t.Errorf("Open kept %d directories without a valid record", n)
			}
			if _, err := os.Lstat(d.Path()); err == nil {
				t.Errorf("Open kept the directory without a valid record")
			}
			d, st := materialize(t, s, "k", m, b)
			if !st.Fresh || st.Written != all {
				t.Errorf("Stats = %+v, want every entry written", st)
			}
			checkDisk(t, d.Path(), m, b)
		})
	}

	failures := map[string]func(*memBlobs) (context.Context, error){
		"blob cannot be opened": func(bad *memBlobs) (context.Context, error) {
			errGone := errors.New("blob gone")
			bad.fail[m2.Entries[3].Digest.Hash] = errGone // d/c, after d/a was rewritten
			return t.Context(), errGone
		},
		"blob content differs": func(bad *memBlobs) (context.Context, error) {
			bad.blobs[m2.Entries[3].Digest.Hash] = []byte("CCC")
			return t.Context(), workdir.ErrBlobMismatch
		},
		"blob longer than its entry": func(bad *memBlobs) (context.Context, error) {
			bad.blobs[m2.Entries[3].Digest.Hash] = []byte("cccc")
			return t.Context(), workdir.ErrBlobMismatch
		},
		"context canceled": func(*memBlobs) (context.Context, error) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx, context.Canceled
		},
	}
	for name, setup := range failures {
		t.Run("fails part-way: "+name, func(t *testing.T) {
			s, root := openStore(t, 0)
			d, _ := materialize(t, s, "k", m, b)
			d.Release()

			bad := newBlobs()
			for dg, c := range b.blobs {
				bad.blobs[dg] = c
			}
			ctx, wantErr := setup(bad)
			_, _, err := s.Materialize(ctx, "k", m2, bad)
			if !errors.Is(err, wantErr) {
				t.Fatalf("Materialize = %v, want %v", err, wantErr)
			}
			if _, err := os.Lstat(filepath.Join(root, d.Slot()+".record")); err == nil {
				t.Errorf("a record survives the failed Materialize")
			}
			if n, size := s.Usage(); n != 0 || size != 0 {
				t.Errorf("after the failure: %d dirs, %d bytes; want the slot deleted", n, size)
			}
			d, st := materialize(t, s, "k", m2, b)
			if !st.Fresh || st.Written != len(m2.Entries) {
				t.Errorf("Stats = %+v, want every entry written anew", st)
			}
			checkDisk(t, d.Path(), m2, b)
		})
	}

	// While the directory changes, no record vouches for it: a crash then
	// leaves a directory that the next Open deletes.
	t.Run("no record while writing", func(t *testing.T) {
		s, root := openStore(t, 0)
		d, _ := materialize(t, s, "k", m, b)
		d.Release()
		record := filepath.Join(root, d.Slot()+".record")
		spy := &recordSpy{memBlobs: b, record: record}
		d, _ = materialize(t, s, "k", m2, spy)
		if spy.opens == 0 || spy.recorded {
			t.Errorf("blobs opened %d times, with a record on disk: %v", spy.opens, spy.recorded)
		}
		d.Release()
		if _, err := os.Lstat(record); err != nil {
			t.Errorf("no record once written: %v", err)
		}
	})

	t.Run("leftovers at Open", func(t *testing.T) {
		root := t.TempDir()
		s := reopen(t, root, 0)
		d, _ := materialize(t, s, "k", m, b)
		d.Release()
		s.Close()
		mustMkdir := func(p string, mode os.FileMode) {
			t.Helper()
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(p, "f"), []byte("x"), 0o444); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
		mustMkdir(filepath.Join(root, "trash", "0123456789abcdef-3.7", "sub"), 0o555)
		mustMkdir(filepath.Join(root, "0123456789abcdef-0"), 0o555) // no record: half-written
		for _, f := range []string{"0123456789abcdef-1.record", d.Slot() + ".record.tmp", "not-ours"} {
			if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s = reopen(t, root, 0)
		want := []string{d.Slot(), d.Slot() + ".record", "lock", "not-ours", "trash"}
		if got := names(t, root); !slices.Equal(got, want) {
			t.Errorf("after Open the store holds %v, want %v", got, want)
		}
		if got := names(t, filepath.Join(root, "trash")); len(got) != 0 {
			t.Errorf("trash holds %v", got)
		}
		_, st := materialize(t, s, "k", m, b)
		if st.Written != 0 {
			t.Errorf("the valid directory was not kept: %+v", st)
		}
	})
}

func TestHostileManifest(t *testing.T) {
	b := newBlobs()
	for _, tc := range []struct {
		name    string
		entries []*kilnv1.ContextEntry
	}{
		{"parent path", []*kilnv1.ContextEntry{file(b, "../escaped", "x", 0o644, t0)}},
		{"absolute path", []*kilnv1.ContextEntry{file(b, "/tmp/escaped", "x", 0o644, t0)}},
		{"dot path", []*kilnv1.ContextEntry{file(b, "a/../../escaped", "x", 0o644, t0)}},
		{"entry under a symlink", []*kilnv1.ContextEntry{symlink("l", "/tmp", t0), file(b, "l/escaped", "x", 0o644, t0)}},
		{"hard link out", []*kilnv1.ContextEntry{hardlink("h", "../escaped")}},
		{"device mode", []*kilnv1.ContextEntry{file(b, "dev", "x", 0o20644, t0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, root := openStore(t, 0)
			_, _, err := s.Materialize(t.Context(), "k", &kilnv1.ContextManifest{Entries: tc.entries}, b)
			if !errors.Is(err, rules.ErrInvalid) {
				t.Fatalf("Materialize = %v, want rules.ErrInvalid", err)
			}
			if got := names(t, root); !slices.Equal(got, []string{"lock", "trash"}) {
				t.Errorf("a refused manifest left %v", got)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "escaped")); err == nil {
				t.Errorf("written outside the store")
			}
		})
	}

	// The disk is not trusted either: a directory swapped for a symlink is
	// not written through.
	t.Run("directory swapped for a symlink on disk", func(t *testing.T) {
		s, _ := openStore(t, 0)
		outside := t.TempDir()
		sentinel := filepath.Join(outside, "sentinel")
		if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		m := manifest(dir("sub", 0o755, t0), file(b, "sub/a", "a", 0o644, t0))
		d, _ := materialize(t, s, "k", m, b)
		d.Release()
		sub := filepath.Join(d.Path(), "sub")
		if err := os.RemoveAll(sub); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, sub); err != nil {
			t.Fatal(err)
		}
		m2 := manifest(dir("sub", 0o755, t0), file(b, "sub/a", "a", 0o644, t0), file(b, "sub/b", "b", 0o644, t0))
		_, _, err := s.Materialize(t.Context(), "k", m2, b)
		if !errors.Is(err, workdir.ErrNotDirectory) {
			t.Errorf("Materialize = %v, want ErrNotDirectory", err)
		}
		if got := names(t, outside); !slices.Equal(got, []string{"sentinel"}) {
			t.Errorf("outside directory holds %v", got)
		}
		d, st := materialize(t, s, "k", m2, b)
		if !st.Fresh {
			t.Errorf("Stats = %+v, want a fresh directory after the failure", st)
		}
		checkDisk(t, d.Path(), m2, b)
	})

	t.Run("file swapped for a symlink on disk", func(t *testing.T) {
		s, _ := openStore(t, 0)
		target := filepath.Join(t.TempDir(), "target")
		if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, _ := materialize(t, s, "k", manifest(file(b, "f", "old", 0o644, t0)), b)
		d.Release()
		f := filepath.Join(d.Path(), "f")
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, f); err != nil {
			t.Fatal(err)
		}
		m2 := manifest(file(b, "f", "new", 0o600, t0+1))
		d, _ = materialize(t, s, "k", m2, b)
		if got, _ := os.ReadFile(target); string(got) != "keep" {
			t.Errorf("written through the symlink: target holds %q", got)
		}
		checkDisk(t, d.Path(), m2, b)
	})
}

func TestMaterializeAfterClose(t *testing.T) {
	b := newBlobs()
	s, _ := openStore(t, 0)
	d, _ := materialize(t, s, "k", manifest(file(b, "f", "x", 0o644, t0)), b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	d.Release() // only unpins
	if _, _, err := s.Materialize(t.Context(), "k", manifest(file(b, "f", "x", 0o644, t0)), b); err == nil {
		t.Errorf("Materialize after Close succeeded")
	}
}

// recordSpy notes whether a record exists whenever a blob is opened, that
// is, while a directory is being written.
type recordSpy struct {
	*memBlobs
	record   string
	spyMu    sync.Mutex // files are written several at once
	opens    int
	recorded bool
}

func (r *recordSpy) Open(digest string) (io.ReadCloser, error) {
	_, err := os.Lstat(r.record)
	r.spyMu.Lock()
	r.opens++
	r.recorded = r.recorded || err == nil
	r.spyMu.Unlock()
	return r.memBlobs.Open(digest)
}
