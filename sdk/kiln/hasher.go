package kiln

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sync/errgroup"
)

const (
	// maxHashWorkers bounds the files hashed at once: enough to keep a
	// disk's queue busy with small files, few enough to stay polite.
	maxHashWorkers = 8
	// hashBufferSize is each hashing worker's read buffer.
	hashBufferSize = 256 << 10
)

// hashFiles hashes files in parallel, setting each one's digest, key and
// size from the file as it was read.
func hashFiles(ctx context.Context, root string, files []*packedFile, onProgress func(ContextProgress)) error {
	if len(files) == 0 {
		return nil
	}
	rep := &progressReporter{fn: onProgress, p: ContextProgress{TotalFiles: len(files)}}
	for _, f := range files {
		rep.p.TotalBytes += f.entry.Size
	}
	g, ctx := errgroup.WithContext(ctx)
	jobs := make(chan *packedFile)
	g.Go(func() error {
		defer close(jobs)
		for _, f := range files {
			select {
			case jobs <- f:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for range min(runtime.GOMAXPROCS(0), maxHashWorkers, len(files)) {
		g.Go(func() error {
			buf := make([]byte, hashBufferSize)
			for f := range jobs {
				if err := hashFile(ctx, root, f, buf, rep); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// hashFile reads one file through sha256. The entry takes the size and
// mtime of the opened file, so what the manifest says is what was hashed.
func hashFile(ctx context.Context, root string, f *packedFile, buf []byte, rep *progressReporter) error {
	abs := filepath.Join(root, filepath.FromSlash(f.entry.Path))
	changed := &FileChangedError{Path: abs, While: "hashing"}
	r, err := os.Open(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return changed
	}
	if err != nil {
		return fmt.Errorf("reading %q: %w", f.entry.Path, err)
	}
	defer r.Close()
	info, err := r.Stat()
	if err != nil {
		return fmt.Errorf("reading %q: %w", f.entry.Path, err)
	}
	if !info.Mode().IsRegular() {
		return changed
	}
	h := sha256.New()
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := r.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		rep.add(0, int64(m))
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading %q: %w", f.entry.Path, err)
		}
	}
	if n != info.Size() {
		return changed
	}
	rep.add(1, 0)
	f.key = keyOf(info)
	f.entry.Size = n
	f.entry.MtimeUnix = info.ModTime().Unix()
	f.setDigest([sha256.Size]byte(h.Sum(nil)))
	return nil
}
