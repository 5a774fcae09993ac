package progress

import (
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// InternalPrefix begins the text of the farm's own bookkeeping lines: log
// lines of no step (step 0) in which the agent reports its work around the
// build (the context files it fetched, the work directory it wrote and in
// how long). The engine's own lines of no step never begin so.
const InternalPrefix = "kiln: "

// Internal says whether l is one of the farm's bookkeeping lines, which
// are for whoever runs the farm: the printer shows them only with
// WithDebug (kiln build --debug), in every mode but json, which is the
// event record as the farm keeps it.
func Internal(l *kilnv1.LogLine) bool {
	return l.GetStep() == 0 && strings.HasPrefix(l.GetText(), InternalPrefix)
}
