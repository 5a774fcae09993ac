package kiln

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestPackContextStatCache(t *testing.T) {
	files := map[string]string{"Dockerfile": "FROM scratch\n", "a": "aa", "b": "bbb", "sub/c": "cccc"}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	type scenario struct {
		name string
		// change alters the context (dir) or its cache file after a first
		// pack has filled the cache.
		change func(t *testing.T, dir, cacheFile string)
		// hashed and hashedBytes are what the next pack must read.
		hashed      int
		hashedBytes int64
	}
	tests := []scenario{
		{name: "unchanged tree hashes no file", change: func(*testing.T, string, string) {}},
		{
			name: "touched file is hashed again, alone",
			change: func(t *testing.T, dir, _ string) {
				touch(t, filepath.Join(dir, "a"), mtime.Add(time.Minute))
			},
			hashed: 1, hashedBytes: 2,
		},
		{
			name: "replaced file (another inode) with the same size and mtime is hashed again",
			change: func(t *testing.T, dir, _ string) {
				tmp := filepath.Join(dir, "c.new")
				writeFile(t, tmp, "CCCC")
				touch(t, tmp, mtime)
				if err := os.Rename(tmp, filepath.Join(dir, "sub/c")); err != nil {
					t.Fatal(err)
				}
			},
			hashed: 1, hashedBytes: 4,
		},
		{
			name: "new file is hashed, the others are not",
			change: func(t *testing.T, dir, _ string) {
				writeFile(t, filepath.Join(dir, "sub/d"), "ddddd")
			},
			hashed: 1, hashedBytes: 5,
		},
		{
			name: "corrupt cache file is ignored",
			change: func(t *testing.T, _, cacheFile string) {
				data, err := os.ReadFile(cacheFile)
				if err != nil {
					t.Fatal(err)
				}
				data[len(statCacheHeader)+10] ^= 1
				if err := os.WriteFile(cacheFile, data, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			hashed: 4, hashedBytes: 13 + 2 + 3 + 4,
		},
		{
			name: "missing cache file is no error",
			change: func(t *testing.T, _, cacheFile string) {
				if err := os.Remove(cacheFile); err != nil {
					t.Fatal(err)
				}
			},
			hashed: 4, hashedBytes: 13 + 2 + 3 + 4,
		},
	}
	if runtime.GOOS == "linux" {
		tests = append(tests, scenario{
			name: "rewritten in place with the same size and mtime is hashed again (ctime)",
			change: func(t *testing.T, dir, _ string) {
				p := filepath.Join(dir, "b")
				writeFile(t, p, "BBB")
				touch(t, p, mtime)
			},
			hashed: 1, hashedBytes: 3,
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, cache := t.TempDir(), t.TempDir()
			writeTree(t, dir, files)
			for name := range files {
				touch(t, filepath.Join(dir, name), mtime)
			}
			first := pack(t, dir, "", withStatCacheDir(cache), withClock(inAnHour))
			if s := first.Stats(); s.Hashed != 4 {
				t.Fatalf("first pack hashed %d files, want 4", s.Hashed)
			}
			tt.change(t, dir, first.cacheFile)
			second := pack(t, dir, "", withStatCacheDir(cache), withClock(inAnHour))
			if s := second.Stats(); s.Hashed != tt.hashed || s.HashedBytes != tt.hashedBytes {
				t.Fatalf("second pack hashed %d files, %d bytes; want %d, %d", s.Hashed, s.HashedBytes, tt.hashed, tt.hashedBytes)
			}
			saved, err := os.Stat(second.cacheFile)
			if err != nil {
				t.Fatalf("no cache file after the second pack: %v", err)
			}
			third := pack(t, dir, "", withStatCacheDir(cache), withClock(inAnHour))
			if s := third.Stats(); s.Hashed != 0 {
				t.Fatalf("third pack hashed %d files, want 0: the second did not save the cache", s.Hashed)
			}
			if after, err := os.Stat(third.cacheFile); err != nil || !os.SameFile(saved, after) {
				t.Errorf("a pack that learnt nothing rewrote the cache file (%v)", err)
			}
		})
	}
}

func TestPackContextStatCacheDistrustsRecentFiles(t *testing.T) {
	dir, cache := t.TempDir(), t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n", "a": "a"})
	info, err := os.Lstat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	// The run starts within a second of the file's last change: it could
	// change again without its times moving.
	k := keyOf(info)
	justAfter := func() time.Time { return time.Unix(0, max(k.mtime, k.ctime)).Add(time.Second) }
	for i := range 2 {
		c := pack(t, dir, "", withStatCacheDir(cache), withClock(justAfter))
		if s := c.Stats(); s.Hashed != 2 {
			t.Fatalf("pack %d hashed %d files, want 2", i+1, s.Hashed)
		}
	}
	if c := pack(t, dir, "", withStatCacheDir(cache), withClock(inAnHour)); c.Stats().Hashed != 2 {
		t.Fatalf("first settled pack hashed %d files, want 2", c.Stats().Hashed)
	}
	if c := pack(t, dir, "", withStatCacheDir(cache), withClock(inAnHour)); c.Stats().Hashed != 0 {
		t.Fatalf("second settled pack hashed %d files, want 0", c.Stats().Hashed)
	}
}

func TestPackContextStatCacheLocation(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})

	t.Run("KILN_CACHE_DIR", func(t *testing.T) {
		cache := t.TempDir()
		t.Setenv("KILN_CACHE_DIR", cache)
		for i, want := range []int{1, 0} {
			c, err := PackContext(t.Context(), dir, "", withClock(inAnHour))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(c.cacheFile, filepath.Join(cache, "statcache")+string(filepath.Separator)) {
				t.Fatalf("cache file %s, want it under %s/statcache", c.cacheFile, cache)
			}
			if got := c.Stats().Hashed; got != want {
				t.Fatalf("pack %d hashed %d files, want %d", i+1, got, want)
			}
		}
	})
	t.Run("unusable cache directory is no error", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		writeFile(t, file, "not a directory")
		t.Setenv("KILN_CACHE_DIR", file)
		for range 2 {
			c, err := PackContext(t.Context(), dir, "", withClock(inAnHour))
			if err != nil {
				t.Fatal(err)
			}
			if c.Stats().Hashed != 1 {
				t.Fatalf("hashed %d files, want 1", c.Stats().Hashed)
			}
		}
	})
}

func TestStatCacheSaveBound(t *testing.T) {
	sum := sha256.Sum256(nil)
	entry := func(size int64) cacheEntry { return cacheEntry{key: fileKey{size: size}, sum: sum} }
	tests := []struct {
		name      string
		old, next map[string]cacheEntry
		limit     int
		want      int
	}{
		{name: "older entries kept below the limit", old: map[string]cacheEntry{"x": entry(1), "y": entry(2)}, next: map[string]cacheEntry{"a": entry(3)}, limit: 10, want: 3},
		{name: "older entries dropped over the limit", old: map[string]cacheEntry{"x": entry(1), "y": entry(2), "z": entry(3)}, next: map[string]cacheEntry{"a": entry(4)}, limit: 2, want: 2},
		{name: "this run is kept whole", old: map[string]cacheEntry{"x": entry(1)}, next: map[string]cacheEntry{"a": entry(1), "b": entry(2), "c": entry(3)}, limit: 2, want: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := openStatCache(t.TempDir(), "/ctx")
			c.old, c.next, c.limit = maps.Clone(tt.old), maps.Clone(tt.next), tt.limit
			if err := c.save(); err != nil {
				t.Fatal(err)
			}
			saved := openStatCache(filepath.Dir(c.file), "/ctx").old
			if len(saved) != tt.want {
				t.Fatalf("saved %d entries, want %d", len(saved), tt.want)
			}
			for rel, e := range tt.next {
				if saved[rel] != e {
					t.Errorf("entry %q of this run not saved", rel)
				}
			}
		})
	}
}

func TestParseStatCache(t *testing.T) {
	entries := map[string]cacheEntry{
		"Dockerfile":           {key: fileKey{size: 13, mtime: 1, ctime: 2, ino: 3, dev: 4}, sum: sha256.Sum256([]byte("x"))},
		"dir with space/\"q\"": {key: fileKey{size: 0, mtime: -5, ctime: 0, ino: 1 << 63, dev: 0}, sum: sha256.Sum256(nil)},
		"new\nline":            {key: fileKey{size: 1 << 40}},
	}
	var valid bytes.Buffer
	if err := writeStatCache(&valid, "/home/me/app", entries); err != nil {
		t.Fatal(err)
	}
	root, got, err := parseStatCache(valid.Bytes())
	if err != nil || root != "/home/me/app" || !maps.Equal(got, entries) {
		t.Fatalf("round trip: root %q, %d entries, err %v", root, len(got), err)
	}

	// withSum re-seals a body so only the body's mistake is tested.
	withSum := func(body string) []byte {
		sum := sha256.Sum256([]byte(body))
		return []byte(body + "sha256 " + hex.EncodeToString(sum[:]) + "\n")
	}
	digest := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		data []byte
	}{
		{name: "empty", data: nil},
		{name: "truncated", data: valid.Bytes()[:valid.Len()-10]},
		{name: "bit flipped", data: flip(valid.Bytes(), 40)},
		{name: "wrong header", data: withSum("kiln statcache 2\nroot \"/\"\n")},
		{name: "no root", data: withSum(statCacheHeader)},
		{name: "unquoted root", data: withSum(statCacheHeader + "root /x\n")},
		{name: "short line", data: withSum(statCacheHeader + "root \"/\"\n" + digest + " 1 2 3 4\n")},
		{name: "long digest", data: withSum(statCacheHeader + "root \"/\"\n" + digest + "ab 1 2 3 4 5 \"a\"\n")},
		{name: "non-hex digest", data: withSum(statCacheHeader + "root \"/\"\n" + strings.Repeat("zz", 32) + " 1 2 3 4 5 \"a\"\n")},
		{name: "negative size", data: withSum(statCacheHeader + "root \"/\"\n" + digest + " -1 2 3 4 5 \"a\"\n")},
		{name: "negative inode", data: withSum(statCacheHeader + "root \"/\"\n" + digest + " 1 2 3 -4 5 \"a\"\n")},
		{name: "unquoted path", data: withSum(statCacheHeader + "root \"/\"\n" + digest + " 1 2 3 4 5 a\n")},
		{name: "duplicate path", data: withSum(statCacheHeader + "root \"/\"\n" + digest + " 1 2 3 4 5 \"a\"\n" + digest + " 1 2 3 4 5 \"a\"\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := parseStatCache(tt.data); err == nil {
				t.Fatal("parseStatCache accepted it")
			}
		})
	}
	t.Run("sealed body parses", func(t *testing.T) {
		if _, got, err := parseStatCache(withSum(statCacheHeader + "root \"/\"\n" + digest + " 1 2 3 4 5 \"a\"\n")); err != nil || len(got) != 1 {
			t.Fatalf("got %v, %v", got, err)
		}
	})
}

func FuzzParseStatCache(f *testing.F) {
	var valid bytes.Buffer
	_ = writeStatCache(&valid, "/ctx", map[string]cacheEntry{"a/b": {key: fileKey{size: 3, mtime: 4}}, "c": {}})
	f.Add(valid.Bytes(), false)
	f.Add([]byte(statCacheHeader+"root \"/\"\n"+strings.Repeat("0", 64)+" 1 2 3 4 5 \"a\"\n"), true)
	f.Add([]byte(statCacheHeader), true)
	f.Add([]byte("sha256 \n"), false)
	f.Fuzz(func(t *testing.T, data []byte, seal bool) {
		if seal {
			// Seal the input with its checksum so the fuzzer reaches the
			// line parser instead of stopping at the checksum.
			sum := sha256.Sum256(data)
			data = append(bytes.Clone(data), "sha256 "+hex.EncodeToString(sum[:])+"\n"...)
		}
		root, entries, err := parseStatCache(data)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip unchanged.
		var b bytes.Buffer
		if err := writeStatCache(&b, root, entries); err != nil {
			t.Fatal(err)
		}
		root2, entries2, err := parseStatCache(b.Bytes())
		if err != nil || root2 != root || !maps.Equal(entries, entries2) {
			t.Fatalf("round trip changed the cache: %q %v -> %q %v (%v)", root, entries, root2, entries2, err)
		}
	})
}

func flip(data []byte, i int) []byte {
	out := bytes.Clone(data)
	out[i] ^= 0x20
	return out
}

func touch(t *testing.T, path string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
