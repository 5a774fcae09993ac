package farmtest

import (
	"fmt"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// CheckManifest applies the farm's rules for a context manifest (those of
// services/ctxmanifest, which the SDK cannot import), limits aside: clean,
// relative, slash-separated UTF-8 paths that stay inside the context;
// entries sorted by path without duplicates; nothing below a non-directory;
// permission bits only; files with a sha256 digest of their size;
// directories without size, digest or target; symlinks with a target; hard
// links to an earlier file.
func CheckManifest(m *kilnv1.ContextManifest) error {
	if m == nil {
		return fmt.Errorf("context manifest is missing")
	}
	types := make(map[string]kilnv1.EntryType, len(m.Entries))
	for i, e := range m.Entries {
		if err := checkPath(e.Path); err != nil {
			return err
		}
		if _, dup := types[e.Path]; dup {
			return invalid(e.Path, "appears twice in the context")
		}
		if i > 0 && m.Entries[i-1].Path > e.Path {
			return invalid(e.Path, "is out of order: entries must be sorted by path")
		}
		for dir := path.Dir(e.Path); dir != "."; dir = path.Dir(dir) {
			if t, ok := types[dir]; ok && t != kilnv1.EntryType_ENTRY_TYPE_DIRECTORY {
				return invalid(e.Path, "is inside %q, which is not a directory", dir)
			}
		}
		if e.Mode&^0o7777 != 0 {
			return invalid(e.Path, "has mode %#o: only permission bits are allowed", e.Mode)
		}
		switch e.Type {
		case kilnv1.EntryType_ENTRY_TYPE_FILE:
			if e.Size < 0 || e.Digest == nil || !digestRE.MatchString(e.Digest.Hash) || e.Digest.SizeBytes != e.Size {
				return invalid(e.Path, "needs a sha256 digest of its %d bytes", e.Size)
			}
		case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
			if e.Size != 0 || e.Digest != nil || e.LinkTarget != "" {
				return invalid(e.Path, "is a directory with a size, digest or link target")
			}
		case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
			if e.LinkTarget == "" || strings.ContainsRune(e.LinkTarget, 0) {
				return invalid(e.Path, "is a symlink with an empty or NUL-holding target")
			}
		case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
			if t, ok := types[e.LinkTarget]; !ok || t != kilnv1.EntryType_ENTRY_TYPE_FILE {
				return invalid(e.Path, "is a hard link to %q, which is not an earlier file of the context", e.LinkTarget)
			}
		default:
			return invalid(e.Path, "has unknown entry type %s", e.Type)
		}
		types[e.Path] = e.Type
	}
	return nil
}

func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("context entry with an empty path")
	case strings.ContainsRune(p, 0):
		return invalid(p, "contains a NUL byte")
	case !utf8.ValidString(p):
		return invalid(p, "is not valid UTF-8")
	case path.IsAbs(p):
		return invalid(p, "is an absolute path")
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return invalid(p, "escapes the build context")
	}
	if c != p || c == "." || strings.Contains(p, `\`) {
		return invalid(p, "is not a clean relative path (want %q)", c)
	}
	return nil
}

func invalid(entry, format string, args ...any) error {
	return fmt.Errorf("context entry %q %s", entry, fmt.Sprintf(format, args...))
}
