package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/services/bus"
)

// exportOutput exports the succeeded BuildKit build o (result res) as its
// spec's --output and stores it in KILN_OUTPUTS for the client: the engine
// writes it into a temporary directory of the agent's (type tar: as its
// tar exporter's tarball, listed with its owners), each regular file
// goes up as the object "sha256/<hex>" of its content (skipped when a
// fresh copy is there), then the ContextManifest listing the files, named
// the same way. It returns the OutputRef for BuildResult.output: nil when
// the build asks for no output or for cacheonly (build, export nothing).
// The directory is removed when it returns.
func (a *Agent) exportOutput(ctx context.Context, spec *kilnv1.BuildSpec, o engine.BuildKitOptions, res engine.Result, ev *events, rep engine.Reporter) (*kilnv1.OutputRef, error) {
	if len(spec.GetOutputs()) == 0 || spec.Outputs[0].GetType() == outputs.TypeCacheOnly {
		return nil, nil
	}
	out := spec.Outputs[0]
	parent := outputsDir(a.cfg.WorkDir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("export type=%s: %w", out.Type, err)
	}
	dir, err := os.MkdirTemp(parent, "kiln-output-")
	if err != nil {
		return nil, fmt.Errorf("export type=%s: %w", out.Type, err)
	}
	defer os.RemoveAll(dir)
	o.Output = &engine.Output{Type: out.Type, Attrs: out.Attrs}
	o.OutputDir = dir
	started := time.Now()
	ev.log(0, fmt.Sprintf("[kiln] exporting output type=%s", out.Type))
	if err := a.cfg.Engine.ExportOutput(ctx, o, res, rep); err != nil {
		return nil, err
	}
	exported := time.Now()
	var (
		m     *kilnv1.ContextManifest
		files []outputFile
	)
	if out.Type == outputs.TypeTar {
		m, files, err = listOutputTar(filepath.Join(dir, engine.OutputTarFile), filepath.Join(dir, "blobs"))
	} else {
		m, files, err = listOutput(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("export type=%s: %w", out.Type, err)
	}
	total, err := buildctx.Validate(m, buildctx.Limits{MaxTotalBytes: 1 << 62, MaxEntries: 1 << 30, MaxPathLen: 4096})
	if err != nil {
		return nil, fmt.Errorf("export type=%s: the engine's output cannot be listed: %w", out.Type, err)
	}
	data, err := buildctx.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("export type=%s: %w", out.Type, err)
	}
	store, err := a.cfg.Conn.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		return nil, farm(fmt.Errorf("export type=%s: open %s: %w", out.Type, bus.BucketOutputs, err))
	}
	up := &outputUploader{js: a.cfg.Conn.JS, store: store}
	if err := up.putFiles(ctx, files); err != nil {
		return nil, farm(fmt.Errorf("export type=%s: %w", out.Type, err))
	}
	sum := sha256.Sum256(data)
	manifest := &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
	if err := up.put(ctx, manifest.Hash, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }); err != nil {
		return nil, farm(fmt.Errorf("export type=%s: %w", out.Type, err))
	}
	n := 0
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE || e.Type == kilnv1.EntryType_ENTRY_TYPE_HARDLINK {
			n++
		}
	}
	ev.log(0, fmt.Sprintf("[kiln] exported output type=%s (%d files, %s) in %s: engine %s, upload %s (%d blobs stored, %d already there)",
		out.Type, n, megabytes(total), time.Since(started).Round(time.Millisecond), exported.Sub(started).Round(time.Millisecond),
		time.Since(exported).Round(time.Millisecond), up.stored.Load(), up.kept.Load()))
	return &kilnv1.OutputRef{Type: out.Type, Manifest: manifest, Size: total}, nil
}

// outputsDir holds the exports in progress, beside the work directories
// workDir names (on the disk sized for builds' files); only one agent uses
// it, as its work directory.
func outputsDir(workDir string) string { return filepath.Clean(workDir) + "-outputs" }

// removeStaleOutputs removes the exports an agent that stopped mid-export
// left in outputsDir.
func removeStaleOutputs(workDir string, log *slog.Logger) {
	if err := os.RemoveAll(outputsDir(workDir)); err != nil {
		log.Warn("remove the exports an earlier run left", "dir", outputsDir(workDir), "err", err)
	}
}

// outputFile is a regular file of an export and its content's digest.
type outputFile struct {
	path, digest string
}

// listOutput lists the export in dir as a ContextManifest, the way a
// context is listed (proto/rules/buildctx): sorted by path, permission
// bits and mtimes kept, symlinks as they are, a file sharing an inode with
// an earlier one as a HARDLINK to it. What a manifest cannot hold (device
// files, pipes, sockets: BuildKit's local exporter writes none of an
// image's /dev) is left out.
func listOutput(dir string) (*kilnv1.ContextManifest, []outputFile, error) {
	m := &kilnv1.ContextManifest{}
	var files []outputFile
	type inode struct{ dev, ino uint64 }
	first := map[inode]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := &kilnv1.ContextEntry{Path: rel, Mode: buildctx.ModeBits(fi.Mode()), MtimeUnix: fi.ModTime().Unix()}
		switch {
		case fi.Mode().IsRegular():
			st, _ := fi.Sys().(*syscall.Stat_t)
			if st != nil && st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if target, ok := first[key]; ok {
					e.Type, e.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_HARDLINK, target
					break
				}
				first[key] = rel
			}
			digest, err := fileDigest(p)
			if err != nil {
				return err
			}
			e.Type, e.Size = kilnv1.EntryType_ENTRY_TYPE_FILE, fi.Size()
			e.Digest = &kilnv1.Digest{Hash: digest, SizeBytes: fi.Size()}
			files = append(files, outputFile{path: p, digest: digest})
		case fi.IsDir():
			e.Type = kilnv1.EntryType_ENTRY_TYPE_DIRECTORY
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Type, e.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_SYMLINK, target
		default:
			return nil
		}
		m.Entries = append(m.Entries, e)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	// WalkDir's order is not the manifest's: it lists "a/b" (inside "a")
	// before "a-b", which sorts first. Sorted, each group of hard links is
	// re-pointed at its first entry.
	slices.SortFunc(m.Entries, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	relinkHardLinks(m)
	return m, files, nil
}

// relinkHardLinks makes each group of hard links point at its first
// entry in manifest order, which must be a FILE (buildctx.Validate).
func relinkHardLinks(m *kilnv1.ContextManifest) {
	index := map[string]int{}
	for i, e := range m.Entries {
		index[e.Path] = i
	}
	for i, e := range m.Entries {
		if e.Type != kilnv1.EntryType_ENTRY_TYPE_HARDLINK {
			continue
		}
		j := index[e.LinkTarget]
		if j < i {
			continue
		}
		// The target sorts after this link: swap their roles.
		t := m.Entries[j]
		e.Type, e.Size, e.Digest, e.LinkTarget = t.Type, t.Size, t.Digest, ""
		t.Type, t.Size, t.Digest, t.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_HARDLINK, 0, nil, e.Path
		for _, other := range m.Entries {
			if other.Type == kilnv1.EntryType_ENTRY_TYPE_HARDLINK && other.LinkTarget == t.Path {
				other.LinkTarget = e.Path
			}
		}
	}
}

func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// outputObject names a blob in KILN_OUTPUTS: "sha256/<hex>" for the
// digest "sha256:<hex>" (the gateway's ReadOutput reads the same name).
func outputObject(digest string) string { return strings.Replace(digest, ":", "/", 1) }

// outputUploader stores an export's blobs, each once.
type outputUploader struct {
	js           jetstream.JetStream // for the completeness check of a stored copy
	store        jetstream.ObjectStore
	stored, kept atomic.Int64
	ttlOnce      sync.Once
	ttl          time.Duration // the bucket's; -1: none, 0: unknown
}

// freshFor is how much of the bucket's TTL a blob already stored must
// have left to be kept rather than stored again: it expires with its
// stream message, so one stored long ago could vanish before the client
// has fetched the manifest naming it.
const freshFor = 3 // quarters of the TTL

// uploadConcurrency is how many blobs an export stores at once: each
// small blob is a few round trips to NATS, which a walk of many small
// files would otherwise wait for one by one.
const uploadConcurrency = 4

// putFiles stores the files' blobs, each content once.
func (u *outputUploader) putFiles(ctx context.Context, files []outputFile) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(uploadConcurrency)
	seen := map[string]bool{}
	for _, f := range files {
		if seen[f.digest] {
			continue
		}
		seen[f.digest] = true
		g.Go(func() error {
			return u.put(gctx, f.digest, func() (io.ReadCloser, error) { return os.Open(f.path) })
		})
	}
	return g.Wait()
}

// put stores the blob digest that open reads, unless it is stored and fresh.
func (u *outputUploader) put(ctx context.Context, digest string, open func() (io.ReadCloser, error)) error {
	name := outputObject(digest)
	info, err := u.store.GetInfo(ctx, name)
	switch {
	case err == nil && !info.Deleted && u.fresh(ctx, info.ModTime) && !bus.ObjectIncomplete(ctx, u.js, bus.BucketOutputs, info):
		u.kept.Add(1)
		return nil
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("look up output blob %s: %w", digest, err)
	}
	r, err := open()
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := u.store.Put(ctx, jetstream.ObjectMeta{Name: name}, r); err != nil {
		// A put that failed may have left its meta without every chunk
		// (the server applied a write the client timed out on): delete
		// it, so neither a later export keeps it nor a client waits on it.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = u.store.Delete(dctx, name)
		return fmt.Errorf("store output blob %s: %w", digest, err)
	}
	u.stored.Add(1)
	return nil
}

// fresh reports whether a blob stored at t outlives freshFor quarters of
// the bucket's TTL from now.
func (u *outputUploader) fresh(ctx context.Context, t time.Time) bool {
	u.ttlOnce.Do(func() {
		if st, err := u.store.Status(ctx); err == nil {
			if u.ttl = st.TTL(); u.ttl <= 0 {
				u.ttl = -1
			}
		}
	})
	if u.ttl == 0 {
		return false // unknown: store it again, which costs a copy, not the output
	}
	return u.ttl < 0 || time.Since(t) < u.ttl*(4-freshFor)/4
}
