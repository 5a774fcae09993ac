package buildctx

import (
	"io/fs"
	"testing"
)

func TestModeBitsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		mode fs.FileMode
		bits uint32
	}{
		{0o644, 0o644},
		{0o755 | fs.ModeSetuid, 0o4755},
		{0o2775&0o777 | fs.ModeSetgid, 0o2775},
		{0o1777&0o777 | fs.ModeSticky, 0o1777},
		{0o600 | fs.ModeDir, 0o600}, // the type is the entry's, not its mode's
	} {
		if got := ModeBits(tc.mode); got != tc.bits {
			t.Errorf("ModeBits(%v) = %o, want %o", tc.mode, got, tc.bits)
		}
		if got := FileMode(tc.bits); got != tc.mode&^fs.ModeType {
			t.Errorf("FileMode(%o) = %v, want %v", tc.bits, got, tc.mode&^fs.ModeType)
		}
	}
}
