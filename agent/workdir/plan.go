package workdir

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"path"
	"slices"
	"strings"

	"github.com/kilnbuild/kiln/agent/contexttar"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// safetyOnly checks what keeps a manifest inside its directory (paths,
// types, links) and no size: the caller applies the tenant's limits.
var safetyOnly = ctxmanifest.Limits{MaxTotalBytes: math.MaxInt64, MaxEntries: math.MaxInt, MaxPathLen: math.MaxInt}

// impliedDirMode is the mode of a directory that a path implies but the
// manifest does not list (Docker's tar extraction makes such parents 0755).
const impliedDirMode = 0o755

// normalize returns m's entries with the directories their paths imply
// added (mode impliedDirMode, the epoch as mtime), sorted by path, so that
// every directory on disk has an entry. m must be valid; it is not modified.
func normalize(m *kilnv1.ContextManifest) *kilnv1.ContextManifest {
	seen := make(map[string]bool, len(m.Entries))
	out := make([]*kilnv1.ContextEntry, 0, len(m.Entries))
	for _, e := range m.Entries {
		for d := path.Dir(e.Path); d != "." && !seen[d]; d = path.Dir(d) {
			seen[d] = true
			out = append(out, &kilnv1.ContextEntry{Path: d, Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: impliedDirMode})
		}
		seen[e.Path] = true
		out = append(out, e)
	}
	// A parent sorts before its children; the order of m's own entries,
	// which Validate found sorted, is kept.
	slices.SortFunc(out, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	return &kilnv1.ContextManifest{Entries: out}
}

// action is what materializing does with one entry of the new context.
type action uint8

const (
	keep    action = iota // on disk as it should be
	create                // nothing there (once removals are done): create it
	replace               // a file, symlink or hard link to delete and create again
	restat                // a directory whose mode or mtime changed: set them
)

// plan is the change from one context (old) to the next, both normalized.
type plan struct {
	entries []*kilnv1.ContextEntry
	actions []action // by index of entries
	// remove lists the old entries to delete, gone or of another type,
	// none inside another, deepest first.
	remove []string
	// removed counts the old entries not in the new context (with those
	// inside removed directories).
	removed int
}

// diff plans the change from old to want.
func diff(old, want *kilnv1.ContextManifest) *plan {
	prev := make(map[string]*kilnv1.ContextEntry, len(old.Entries))
	for _, e := range old.Entries {
		prev[e.Path] = e
	}
	p := &plan{entries: want.Entries, actions: make([]action, len(want.Entries))}
	next := make(map[string]*kilnv1.ContextEntry, len(want.Entries))
	rewritten := map[string]bool{} // files written anew: their hard links must follow
	for i, e := range want.Entries {
		next[e.Path] = e
		o := prev[e.Path]
		switch {
		case o == nil || o.Type != e.Type:
			p.actions[i] = create
		case e.Type == kilnv1.EntryType_ENTRY_TYPE_DIRECTORY:
			if o.Mode != e.Mode || o.MtimeUnix != e.MtimeUnix {
				p.actions[i] = restat
			}
		case e.Type == kilnv1.EntryType_ENTRY_TYPE_HARDLINK:
			// A hard link shares its target's inode, mode and mtime.
			if o.LinkTarget != e.LinkTarget || rewritten[e.LinkTarget] {
				p.actions[i] = replace
			}
		default:
			if o.Mode != e.Mode || o.MtimeUnix != e.MtimeUnix || o.Size != e.Size ||
				o.LinkTarget != e.LinkTarget || o.GetDigest().GetHash() != e.GetDigest().GetHash() {
				p.actions[i] = replace
			}
		}
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE && p.actions[i] != keep {
			rewritten[e.Path] = true
		}
	}
	gone := map[string]bool{}
	for _, o := range old.Entries {
		e := next[o.Path]
		if e != nil && e.Type == o.Type {
			continue
		}
		if e == nil {
			p.removed++
		}
		gone[o.Path] = true
		if !insideAny(o.Path, gone) {
			p.remove = append(p.remove, o.Path)
		}
	}
	slices.Reverse(p.remove) // old is sorted: children after parents
	return p
}

// insideAny reports whether a directory above p is in set.
func insideAny(p string, set map[string]bool) bool {
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		if set[d] {
			return true
		}
	}
	return false
}

// unchanged reports whether applying p would change nothing.
func (p *plan) unchanged() bool {
	if len(p.remove) > 0 {
		return false
	}
	for _, a := range p.actions {
		if a != keep {
			return false
		}
	}
	return true
}

// maxSec is the last whole second whose nanoseconds, plus up to 999999999,
// still fit in an int64 (BuildKit's fsutil carries mtimes as UnixNano).
const maxSec = math.MaxInt64/1_000_000_000 - 1

// mtime is the modification time entry e gets on disk, in nanoseconds since
// the epoch: its mtime_unix (the epoch where Docker would use the epoch,
// see contexttar.Mtime), plus for a file a nanosecond part taken from its
// digest. fsutil decides what to send by stats, not content; the digest
// part makes a change of content change the mtime even when mtime_unix and
// size stay the same, and keeps the same content at the same mtime.
func mtime(e *kilnv1.ContextEntry) int64 {
	sec := contexttar.Mtime(e).Unix()
	if sec > maxSec {
		sec = 0
	}
	ns := sec * 1e9
	if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
		ns += digestNanos(e.GetDigest().GetHash())
	}
	return ns
}

// digestNanos is the first 8 bytes of a "sha256:<hex>" digest, big-endian,
// modulo 1e9.
func digestNanos(digest string) int64 {
	h := strings.TrimPrefix(digest, "sha256:")
	if len(h) < 16 {
		return 0 // Validate accepts only well-formed digests
	}
	raw, err := hex.DecodeString(h[:16])
	if err != nil {
		return 0
	}
	return int64(binary.BigEndian.Uint64(raw) % 1e9)
}

// recordMagic starts a record. Its version covers the conventions of what a
// record vouches for on disk (mtime derivation, implied directories): a
// change to them must change it, so that older directories are rewritten.
const recordMagic = "kiln-workdir-record v1\n"

// encodeRecord serializes the normalized manifest a directory holds, behind
// a sha256 of it that decodeRecord checks.
func encodeRecord(m *kilnv1.ContextManifest) ([]byte, error) {
	payload, err := ctxmanifest.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode context record: %w", err)
	}
	sum := sha256.Sum256(payload)
	out := make([]byte, 0, len(recordMagic)+len(sum)+len(payload))
	out = append(out, recordMagic...)
	out = append(out, sum[:]...)
	return append(out, payload...), nil
}

// errBadRecord: a record is not one encodeRecord wrote.
var errBadRecord = errors.New("context record is damaged")

// decodeRecord returns the manifest a record holds, refusing one that is
// truncated, altered or unsafe.
func decodeRecord(data []byte) (*kilnv1.ContextManifest, error) {
	rest, ok := bytes.CutPrefix(data, []byte(recordMagic))
	if !ok || len(rest) < sha256.Size {
		return nil, fmt.Errorf("%w: no header", errBadRecord)
	}
	payload := rest[sha256.Size:]
	if sum := sha256.Sum256(payload); !bytes.Equal(sum[:], rest[:sha256.Size]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadRecord)
	}
	m, err := ctxmanifest.Unmarshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	if _, err := ctxmanifest.Validate(m, safetyOnly); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	return m, nil
}

// fileBytes is the size of m's files.
func fileBytes(m *kilnv1.ContextManifest) int64 {
	var n int64
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			n += e.Size
		}
	}
	return n
}
