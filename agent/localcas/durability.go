package localcas

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kilnbuild/kiln/services/cas"
)

// A fetched blob is renamed to the name that vouches for its content only
// once its bytes are durable, or could be checked after a crash:
//
//   - a blob over UnsyncedMaxBytes is synced first (groupSync: with the
//     blobs fetched beside it);
//   - a small blob is not: thousands of one-line files would pay a journal
//     commit each. It is not even renamed: verified in memory, it is
//     written straight under its name (downloadSmall), which Ensure
//     indexes only once the write succeeded. Instead the store keeps a marker, "clean", that only a
//     Close writes, after syncing the file system, and Open removes
//     (durably) before anything is fetched. Open without the marker (the
//     last run crashed, or never closed) checks every small blob against
//     its name and drops the torn ones.
const UnsyncedMaxBytes = 64 << 10

const cleanMarker = "clean"

// startDirty removes the clean marker durably, reporting whether it was
// there.
func (s *Store) startDirty() (bool, error) {
	name := filepath.Join(s.dir, cleanMarker)
	err := os.Remove(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, syncDir(s.dir)
}

// markClean syncs the file system and writes the clean marker, unless a
// torn small blob could not be removed (the next Open must check).
func (s *Store) markClean() error {
	if s.tainted.Load() {
		return nil
	}
	f, err := os.Create(filepath.Join(s.dir, cleanMarker))
	if err != nil {
		return err
	}
	if err := syncFS(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// verifySmall drops the small blobs of found whose content does not hash
// to their name, and returns the others.
func (s *Store) verifySmall(found []*blob) ([]*blob, error) {
	kept := found[:0]
	for _, e := range found {
		if e.size > UnsyncedMaxBytes {
			kept = append(kept, e)
			continue
		}
		ok, err := hashesTo(s.path(e.digest), e.digest)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if !ok {
			s.log.Warn("local blob store: dropping a blob torn by a crash", "digest", e.digest)
			if err := os.Remove(s.path(e.digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			continue
		}
		kept = append(kept, e)
	}
	return kept, nil
}

func hashesTo(path, digest string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("check blob %s: %w", digest, err)
	}
	return "sha256:"+hex.EncodeToString(h.Sum(nil)) == digest, nil
}

// downloadSmall writes a small blob (its size known, at most
// UnsyncedMaxBytes) straight under its name, without the temporary file
// and the rename: the name vouches for nothing until Ensure indexes the
// blob, which only happens once its bytes matched, and a torn file a crash
// leaves under its name is dropped by the next Open's check (the store is
// not clean). A mismatch removes the file; if it cannot be removed, the
// store is left marked dirty so the next Open checks it.
func (s *Store) downloadSmall(b Blob, r io.Reader) (int64, []byte, error) {
	buf := make([]byte, b.Size+1) // one byte more tells a longer blob
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, nil, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	if got := sumOf(buf[:n]); got != b.Digest || int64(n) != b.Size {
		return 0, nil, fmt.Errorf("fetch blob %s: %w: asked for %d bytes, received %d bytes with digest %s",
			b.Digest, cas.ErrDigestMismatch, b.Size, n, got)
	}
	if s.reserveMemory(int64(n)) {
		return int64(n), buf[:n:n], nil
	}
	name := s.path(b.Digest)
	if err := os.WriteFile(name, buf[:n], 0o600); err != nil {
		if rerr := os.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.tainted.Store(true)
		}
		return 0, nil, fmt.Errorf("fetch blob %s: %w", b.Digest, err)
	}
	return int64(n), nil, nil
}

func sumOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
