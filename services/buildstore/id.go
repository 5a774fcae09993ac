package buildstore

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns a build id that sorts by creation time: "b" followed by 26
// lower-case Crockford base32 characters (48-bit milliseconds, 80 random bits).
func NewID(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	return "b" + idEncoding.EncodeToString(b[:])
}

// ValidID reports whether id has the form NewID produces, so ids taken
// from requests are safe as KV keys and subject tokens.
func ValidID(id string) bool {
	if len(id) != 27 || id[0] != 'b' {
		return false
	}
	for _, c := range id[1:] {
		if !strings.ContainsRune("0123456789abcdefghjkmnpqrstvwxyz", c) {
			return false
		}
	}
	return true
}

// IDFloor is the least id NewID can return at t or later: every build
// created at or after t has an id that sorts at or above it.
func IDFloor(t time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(max(t.UnixMilli(), 0))<<16)
	return "b" + idEncoding.EncodeToString(b[:])
}
