package kiln

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	// maxStatCacheEntries bounds one cache file: the files of the last run
	// are always kept, older entries only up to this many in all.
	maxStatCacheEntries = 1 << 20
	// maxStatCacheFile bounds the bytes read from a cache file; a bigger
	// one is ignored (and replaced by the next save).
	maxStatCacheFile = 256 << 20
	// statCacheHeader starts every cache file; a new format gets a new one.
	statCacheHeader = "kiln statcache 1\n"
)

// statCache remembers the digests of one context directory's files, keyed
// by each file's slash path and stat identity (fileKey), so PackContext
// does not read a file that did not change since an earlier run.
//
// It is one file per context directory, named after the directory's path,
// written whole to a temporary file and renamed over the old one, so
// concurrent runs never see a torn file: the last writer wins and the loser's
// entries are hashed again next time. The file format is text:
//
//	kiln statcache 1
//	root "/abs/context/dir"
//	<sha256 hex> <size> <mtime ns> <ctime ns> <inode> <device> "<slash path>"
//	...
//	sha256 <hex of every byte above>
//
// A file that does not parse, fails its checksum or names another root is
// ignored. Not safe for concurrent use: PackContext calls it from one
// goroutine.
type statCache struct {
	// file is the cache file's path, "" when there is no cache.
	file string
	root string
	// old holds the loaded entries not yet looked up.
	old map[string]cacheEntry
	// next holds the entries of this run, to be saved.
	next map[string]cacheEntry
	// limit bounds the entries saved, unless this run alone has more.
	limit int
	// loaded is set when the file was read; dirty when this run learnt
	// something the file does not say, so save must write it.
	loaded, dirty bool
}

// cacheEntry is a file's stat identity and the digest of its content.
type cacheEntry struct {
	key fileKey
	sum [sha256.Size]byte
}

// defaultStatCacheDir is $KILN_CACHE_DIR/statcache, else
// os.UserCacheDir()/kiln/statcache, else "" (no cache).
func defaultStatCacheDir() string {
	if dir := os.Getenv("KILN_CACHE_DIR"); dir != "" {
		return filepath.Join(dir, "statcache")
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "kiln", "statcache")
}

// openStatCache loads the cache of the context at root from dir. It never
// fails: without a usable file the cache starts empty.
func openStatCache(dir, root string) *statCache {
	c := &statCache{root: root, next: map[string]cacheEntry{}, limit: maxStatCacheEntries}
	if dir == "" {
		return c
	}
	name := sha256.Sum256([]byte(root))
	c.file = filepath.Join(dir, hex.EncodeToString(name[:16]))
	f, err := os.Open(c.file)
	if err != nil {
		return c
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStatCacheFile+1))
	if err != nil || len(data) > maxStatCacheFile {
		return c
	}
	if r, entries, err := parseStatCache(data); err == nil && r == root {
		c.old, c.loaded = entries, true
	}
	return c
}

// lookup returns the digest remembered for the file at rel if its key is
// unchanged; the entry is kept for the next run.
func (c *statCache) lookup(rel string, k fileKey) ([sha256.Size]byte, bool) {
	e, ok := c.old[rel]
	delete(c.old, rel)
	if !ok || e.key != k {
		c.dirty = c.dirty || ok // the stale entry goes
		return [sha256.Size]byte{}, false
	}
	c.next[rel] = e
	return e.sum, true
}

// add remembers the digest of the file at rel for the next run.
func (c *statCache) add(rel string, k fileKey, sum [sha256.Size]byte) {
	c.next[rel] = cacheEntry{key: k, sum: sum}
	c.dirty = true
}

// save writes this run's entries, and older ones while there are fewer
// than c.limit, atomically: temporary file, then rename. A file that
// already says all of it is left alone.
func (c *statCache) save() (err error) {
	if c.file == "" || (c.loaded && !c.dirty) {
		return nil
	}
	entries := c.next
	for rel, e := range c.old {
		if len(entries) >= c.limit {
			break
		}
		entries[rel] = e
	}
	dir := filepath.Dir(c.file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(c.file)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 256<<10)
	if err := writeStatCache(w, c.root, entries); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.file)
}

// removeStatCache deletes a cache file, so that the next run hashes every
// file again.
func removeStatCache(file string) {
	if file != "" {
		_ = os.Remove(file)
	}
}

// writeStatCache encodes a cache file, entries sorted by path.
func writeStatCache(w io.Writer, root string, entries map[string]cacheEntry) error {
	h := sha256.New()
	bw := bufio.NewWriter(io.MultiWriter(w, h))
	bw.WriteString(statCacheHeader)
	bw.WriteString("root " + strconv.Quote(root) + "\n")
	rels := make([]string, 0, len(entries))
	for rel := range entries {
		rels = append(rels, rel)
	}
	slices.Sort(rels)
	var line []byte
	for _, rel := range rels {
		e := entries[rel]
		line = hex.AppendEncode(line[:0], e.sum[:])
		line = append(line, ' ')
		line = strconv.AppendInt(line, e.key.size, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, e.key.mtime, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, e.key.ctime, 10)
		line = append(line, ' ')
		line = strconv.AppendUint(line, e.key.ino, 10)
		line = append(line, ' ')
		line = strconv.AppendUint(line, e.key.dev, 10)
		line = append(line, ' ')
		line = strconv.AppendQuote(line, rel)
		line = append(line, '\n')
		bw.Write(line)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, "sha256 "+hex.EncodeToString(h.Sum(nil))+"\n")
	return err
}

// errCorruptStatCache is what parseStatCache returns for a file it cannot
// take; the caller ignores the file.
var errCorruptStatCache = errors.New("corrupt stat cache")

// parseStatCache decodes a cache file written by writeStatCache and returns
// its root and entries.
func parseStatCache(data []byte) (string, map[string]cacheEntry, error) {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errCorruptStatCache, fmt.Sprintf(format, args...))
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		return "", nil, corrupt("does not end with a newline")
	}
	cut := bytes.LastIndexByte(data[:len(data)-1], '\n') + 1
	body, trailer := data[:cut], string(data[cut:len(data)-1])
	sum := sha256.Sum256(body)
	if trailer != "sha256 "+hex.EncodeToString(sum[:]) {
		return "", nil, corrupt("checksum does not match")
	}
	rest, ok := strings.CutPrefix(string(body), statCacheHeader)
	if !ok {
		return "", nil, corrupt("unknown header")
	}
	lines := strings.Split(rest, "\n")
	lines = lines[:len(lines)-1] // body ends with "\n"
	if len(lines) == 0 {
		return "", nil, corrupt("no root line")
	}
	quoted, ok := strings.CutPrefix(lines[0], "root ")
	if !ok {
		return "", nil, corrupt("no root line")
	}
	root, err := strconv.Unquote(quoted)
	if err != nil {
		return "", nil, corrupt("root: %v", err)
	}
	entries := make(map[string]cacheEntry, len(lines)-1)
	for i, line := range lines[1:] {
		rel, e, err := parseStatCacheLine(line)
		if err != nil {
			return "", nil, corrupt("line %d: %v", i+3, err)
		}
		if _, dup := entries[rel]; dup {
			return "", nil, corrupt("line %d: %q appears twice", i+3, rel)
		}
		entries[rel] = e
	}
	return root, entries, nil
}

func parseStatCacheLine(line string) (string, cacheEntry, error) {
	var e cacheEntry
	f := strings.SplitN(line, " ", 7)
	if len(f) != 7 {
		return "", e, errors.New("want 7 fields")
	}
	if len(f[0]) != hex.EncodedLen(sha256.Size) {
		return "", e, fmt.Errorf("bad digest %q", f[0])
	}
	if _, err := hex.Decode(e.sum[:], []byte(f[0])); err != nil {
		return "", e, fmt.Errorf("bad digest %q", f[0])
	}
	var err error
	if e.key.size, err = strconv.ParseInt(f[1], 10, 64); err != nil || e.key.size < 0 {
		return "", e, fmt.Errorf("bad size %q", f[1])
	}
	if e.key.mtime, err = strconv.ParseInt(f[2], 10, 64); err != nil {
		return "", e, fmt.Errorf("bad mtime %q", f[2])
	}
	if e.key.ctime, err = strconv.ParseInt(f[3], 10, 64); err != nil {
		return "", e, fmt.Errorf("bad ctime %q", f[3])
	}
	if e.key.ino, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return "", e, fmt.Errorf("bad inode %q", f[4])
	}
	if e.key.dev, err = strconv.ParseUint(f[5], 10, 64); err != nil {
		return "", e, fmt.Errorf("bad device %q", f[5])
	}
	rel, err := strconv.Unquote(f[6])
	if err != nil {
		return "", e, fmt.Errorf("bad path %q", f[6])
	}
	return rel, e, nil
}
