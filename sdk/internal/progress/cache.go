package progress

import (
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// cacheLine is how plain and tty output tell a cache import or export of
// the build: "#cache importing from REF", "exported cache to REF
// (mode=max) in 2.1s", or, for one that failed (which never fails the
// build), "warning: automatic cache export to REF failed: …". The
// automatic warm start's export comes after the build's finished line.
func cacheLine(c *kilnv1.CacheEvent) string {
	what := "cache"
	if c.GetAutomatic() {
		what = "automatic cache"
	}
	ref := c.GetRef()
	if ref == "" {
		ref = "the image (type=" + c.GetType() + ")"
	}
	if c.GetKind() == kilnv1.CacheEvent_KIND_IMPORT {
		if c.GetError() != "" {
			return fmt.Sprintf("warning: %s import from %s failed: %s", what, ref, c.GetError())
		}
		line := "#cache importing from " + ref
		if c.GetAutomatic() {
			line += " (automatic warm start)"
		}
		return line
	}
	if c.GetError() != "" {
		return fmt.Sprintf("warning: %s export to %s failed: %s", what, ref, c.GetError())
	}
	line := "exported " + what + " to " + ref
	if c.GetMode() != "" {
		line += " (mode=" + c.GetMode() + ")"
	}
	if d := c.GetDuration(); d != nil {
		line += " in " + seconds(d.AsDuration())
	}
	return line
}
