// Package buildctx holds the rules of a build context manifest
// (kiln.v1.ContextManifest): what keeps a context from touching anything
// outside itself, and the limits on its size. The SDK checks the paths it
// packs against them; the gateway validates a manifest before it accepts
// it; the agent validates it again before it builds from it.
//
// Errors match rules.ErrInvalid (an unsafe or malformed entry, named in the
// message) or rules.ErrOverLimit (the limit and the value, named).
package buildctx

import (
	"flag"
	"fmt"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

// Limits bound one context.
type Limits struct {
	// MaxTotalBytes bounds the sum of the file sizes.
	MaxTotalBytes int64
	// MaxEntries bounds the number of entries.
	MaxEntries int
	// MaxPathLen bounds one entry's path, in bytes.
	MaxPathLen int
}

// DefaultLimits apply unless a farm configures others.
var DefaultLimits = Limits{MaxTotalBytes: 2 << 30, MaxEntries: 100_000, MaxPathLen: 4096}

// MaxManifestBytes bounds an encoded manifest (100 000 entries take about
// 15 MB; this leaves room for long paths).
const MaxManifestBytes = 256 << 20

// PermBits are the only mode bits an entry may carry: permissions,
// setuid, setgid and sticky.
const PermBits = 0o7777

// Flags registers the limits as flags, defaulting to DefaultLimits. The
// gateway and the agent take the same flags so they agree on what a
// context may be.
func (l *Limits) Flags(fs *flag.FlagSet) {
	*l = DefaultLimits
	fs.Int64Var(&l.MaxTotalBytes, "context-max-bytes", l.MaxTotalBytes, "largest build context, in bytes")
	fs.IntVar(&l.MaxEntries, "context-max-entries", l.MaxEntries, "most entries (files, directories, links) in a build context")
	fs.IntVar(&l.MaxPathLen, "context-max-path", l.MaxPathLen, "longest path in a build context, in bytes")
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDigest reports whether d names a blob as the farm does:
// "sha256:" and 64 lower-case hex digits.
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// Validate checks every entry of m against the rules and l, and returns the
// total size of its files.
func Validate(m *kilnv1.ContextManifest, l Limits) (int64, error) {
	if m == nil {
		return 0, rules.Invalidf("context manifest is missing")
	}
	if n := len(m.Entries); n > l.MaxEntries {
		return 0, rules.OverLimitf("context has %d entries, over the limit of %d entries", n, l.MaxEntries)
	}
	types := make(map[string]kilnv1.EntryType, len(m.Entries))
	sockets := map[string]bool{}
	var total int64
	for i, e := range m.Entries {
		if err := CheckPath(e.Path, l.MaxPathLen); err != nil {
			return 0, err
		}
		if _, dup := types[e.Path]; dup {
			return 0, invalid(e.Path, "appears twice in the context")
		}
		if i > 0 && m.Entries[i-1].Path > e.Path {
			return 0, invalid(e.Path, "is out of order: entries must be sorted by path")
		}
		// An entry under a symlink would be written through it.
		for dir := path.Dir(e.Path); dir != "."; dir = path.Dir(dir) {
			if t, ok := types[dir]; ok && t != kilnv1.EntryType_ENTRY_TYPE_DIRECTORY {
				return 0, invalid(e.Path, "is inside %q, which is not a directory", dir)
			}
		}
		if e.Mode&^PermBits != 0 {
			return 0, invalid(e.Path, "has mode %#o: device files, pipes and sockets cannot be in a build context", e.Mode)
		}
		if e.Socket && (e.Type != kilnv1.EntryType_ENTRY_TYPE_FILE || e.Size != 0) {
			return 0, invalid(e.Path, "is marked a socket but is not an empty file entry")
		}
		switch e.Type {
		case kilnv1.EntryType_ENTRY_TYPE_FILE:
			if e.Size < 0 {
				return 0, invalid(e.Path, "has a negative size %d", e.Size)
			}
			if e.Digest == nil || !ValidDigest(e.Digest.Hash) || e.Digest.SizeBytes != e.Size {
				return 0, invalid(e.Path, "needs a sha256 digest of its %d bytes", e.Size)
			}
			total += e.Size
			if total > l.MaxTotalBytes {
				return 0, rules.OverLimitf("context is over %d bytes (the total size limit) at entry %q", l.MaxTotalBytes, e.Path)
			}
		case kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
			if e.Size != 0 || e.Digest != nil || e.LinkTarget != "" {
				return 0, invalid(e.Path, "is a directory with a size, digest or link target")
			}
		case kilnv1.EntryType_ENTRY_TYPE_SYMLINK:
			if e.LinkTarget == "" || strings.ContainsRune(e.LinkTarget, 0) || len(e.LinkTarget) > l.MaxPathLen {
				return 0, invalid(e.Path, "is a symlink with an empty, overlong or NUL-holding target")
			}
		case kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
			target := e.LinkTarget
			if c := path.Clean(target); c != target || path.IsAbs(target) || c == ".." || strings.HasPrefix(c, "../") {
				return 0, invalid(e.Path, "is a hard link to %q, outside the build context", target)
			}
			if t, ok := types[target]; !ok || t != kilnv1.EntryType_ENTRY_TYPE_FILE || sockets[target] {
				return 0, invalid(e.Path, "is a hard link to %q, which is not an earlier file of the context", target)
			}
		default:
			return 0, invalid(e.Path, "has unknown entry type %s", e.Type)
		}
		types[e.Path] = e.Type
		if e.Socket {
			sockets[e.Path] = true // a classic build's tar leaves it out: nothing links to it
		}
	}
	return total, nil
}

// CheckPath accepts only a clean, relative, slash-separated UTF-8 path of
// at most maxLen bytes that stays inside the context.
func CheckPath(p string, maxLen int) error {
	switch {
	case p == "":
		return rules.Invalidf("context entry with an empty path")
	case len(p) > maxLen:
		return rules.OverLimitf("context entry path of %d bytes is over the limit of %d bytes (%.40q…)", len(p), maxLen, p)
	case strings.ContainsRune(p, 0):
		return invalid(p, "contains a NUL byte")
	case !utf8.ValidString(p):
		return invalid(p, "is not valid UTF-8")
	case path.IsAbs(p):
		return invalid(p, "is an absolute path")
	case strings.Contains(p, `\`):
		return invalid(p, "has a backslash in its name")
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return invalid(p, "escapes the build context")
	}
	if c != p || c == "." {
		return invalid(p, "is not a clean relative path (want %q)", c)
	}
	return nil
}

// CleanPath returns p (a path a client names inside the context, like the
// Dockerfile's) as a clean slash path inside the context, or an error
// saying why it is absolute, empty or escapes the context.
func CleanPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", rules.Invalidf("contains a NUL byte")
	}
	c := path.Clean(p)
	if path.IsAbs(p) || strings.HasPrefix(c, `\`) {
		return "", rules.Invalidf("is absolute; give a path inside the build context")
	}
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", rules.Invalidf("escapes the build context")
	}
	return c, nil
}

func invalid(entry, format string, args ...any) error {
	return rules.Invalidf("context entry %q %s", entry, fmt.Sprintf(format, args...))
}

// Marshal encodes m deterministically; its sha256 is the manifest's digest.
func Marshal(m *kilnv1.ContextManifest) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// Unmarshal decodes a manifest blob.
func Unmarshal(data []byte) (*kilnv1.ContextManifest, error) {
	m := &kilnv1.ContextManifest{}
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, rules.Invalidf("context manifest does not decode: %v", err)
	}
	return m, nil
}

// Find returns the entry at p, or nil.
func Find(m *kilnv1.ContextManifest, p string) *kilnv1.ContextEntry {
	for _, e := range m.Entries {
		if e.Path == p {
			return e
		}
	}
	return nil
}
