// Package ctxmanifest checks and encodes build-context manifests
// (kiln.v1.ContextManifest): the farm-side guard that keeps a context from
// touching anything outside itself. The gateway validates a manifest before
// it accepts it; the agent validates again before it builds from one.
package ctxmanifest

import (
	"flag"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/cas"
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

// DefaultLimits apply until limits are configured per tenant.
var DefaultLimits = Limits{MaxTotalBytes: 2 << 30, MaxEntries: 100_000, MaxPathLen: 4096}

// MaxManifestBytes bounds an encoded manifest (100 000 entries take about
// 15 MB; this leaves room for long paths).
const MaxManifestBytes = 256 << 20

// Flags registers the limits as flags, defaulting to DefaultLimits. The
// gateway and the agent take the same flags so they agree on what a
// context may be.
func (l *Limits) Flags(fs *flag.FlagSet) {
	*l = DefaultLimits
	fs.Int64Var(&l.MaxTotalBytes, "context-max-bytes", l.MaxTotalBytes, "largest build context, in bytes")
	fs.IntVar(&l.MaxEntries, "context-max-entries", l.MaxEntries, "most entries (files, directories, links) in a build context")
	fs.IntVar(&l.MaxPathLen, "context-max-path", l.MaxPathLen, "longest path in a build context, in bytes")
}

// permBits are the only mode bits an entry may carry.
const permBits = 0o7777

// Validate checks every entry of m and returns the total size of its files.
// Errors are gRPC statuses: InvalidArgument naming the unsafe entry, or
// ResourceExhausted naming the limit and the value.
func Validate(m *kilnv1.ContextManifest, l Limits) (int64, error) {
	if m == nil {
		return 0, status.Error(codes.InvalidArgument, "context manifest is missing")
	}
	if n := len(m.Entries); n > l.MaxEntries {
		return 0, status.Errorf(codes.ResourceExhausted, "context has %d entries, over the limit of %d entries", n, l.MaxEntries)
	}
	types := make(map[string]kilnv1.EntryType, len(m.Entries))
	var total int64
	for i, e := range m.Entries {
		if err := checkPath(e.Path, l); err != nil {
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
		if e.Mode&^permBits != 0 {
			return 0, invalid(e.Path, "has mode %#o: device files, pipes and sockets cannot be in a build context", e.Mode)
		}
		switch e.Type {
		case kilnv1.EntryType_ENTRY_TYPE_FILE:
			if e.Size < 0 {
				return 0, invalid(e.Path, "has a negative size %d", e.Size)
			}
			if e.Digest == nil || !cas.ValidDigest(e.Digest.Hash) || e.Digest.SizeBytes != e.Size {
				return 0, invalid(e.Path, "needs a sha256 digest of its %d bytes", e.Size)
			}
			total += e.Size
			if total > l.MaxTotalBytes {
				return 0, status.Errorf(codes.ResourceExhausted, "context is over %d bytes (the total size limit) at entry %q", l.MaxTotalBytes, e.Path)
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
			if t, ok := types[target]; !ok || t != kilnv1.EntryType_ENTRY_TYPE_FILE {
				return 0, invalid(e.Path, "is a hard link to %q, which is not an earlier file of the context", target)
			}
		default:
			return 0, invalid(e.Path, "has unknown entry type %s", e.Type)
		}
		types[e.Path] = e.Type
	}
	return total, nil
}

// checkPath accepts only clean, relative, slash-separated paths that stay
// inside the context.
func checkPath(p string, l Limits) error {
	switch {
	case p == "":
		return status.Error(codes.InvalidArgument, "context entry with an empty path")
	case len(p) > l.MaxPathLen:
		return status.Errorf(codes.ResourceExhausted, "context entry path of %d bytes is over the limit of %d bytes (%.40q…)", len(p), l.MaxPathLen, p)
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
	return status.Errorf(codes.InvalidArgument, "context entry %q %s", entry, fmt.Sprintf(format, args...))
}

// Marshal encodes m deterministically; its sha256 is the manifest's digest.
func Marshal(m *kilnv1.ContextManifest) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// Unmarshal decodes a manifest blob.
func Unmarshal(data []byte) (*kilnv1.ContextManifest, error) {
	m := &kilnv1.ContextManifest{}
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "context manifest does not decode: %v", err)
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
