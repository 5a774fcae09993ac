package enginetest

import (
	"archive/tar"
	"bytes"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

// epoch is the modification time of every entry the helpers write, so the
// same files make the same tar.
var epoch = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// ContextTar returns an uncompressed tar build context holding files, keyed
// by slash-separated relative path ("Dockerfile", "src/main.sh"), with their
// parent directories. Files are 0644; a path ending in ".sh" is 0755. The
// same map always gives the same bytes.
func ContextTar(t testing.TB, files map[string]string) io.Reader {
	t.Helper()
	var entries []*tar.Header
	bodies := map[string][]byte{}
	dirs := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		clean := path.Clean(name)
		if clean != name || path.IsAbs(name) || clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
			t.Fatalf("enginetest: context path %q is not a clean relative path", name)
		}
		for _, dir := range parents(clean) {
			if !dirs[dir] {
				dirs[dir] = true
				entries = append(entries, &tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755})
			}
		}
		mode := int64(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		entries = append(entries, &tar.Header{Typeflag: tar.TypeReg, Name: clean, Mode: mode})
		bodies[clean] = []byte(files[name])
	}
	b, err := writeTar(entries, bodies)
	if err != nil {
		t.Fatalf("enginetest: context tar: %v", err)
	}
	return bytes.NewReader(b)
}

// parents lists the directories above name, outermost first.
func parents(name string) []string {
	var out []string
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		out = append(out, dir)
	}
	slices.Reverse(out)
	return out
}

// writeTar writes entries in order, owned by root and dated epoch; a regular
// file's content is bodies[its name].
func writeTar(entries []*tar.Header, bodies map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h.ModTime, h.Uid, h.Gid = epoch, 0, 0
		body := bodies[h.Name]
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
