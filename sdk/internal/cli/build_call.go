package cli

import (
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// printCall prints what a --call (check, outline, targets) answered, as
// buildx does, on standard output, and returns the exit code: for a check,
// ExitFailed when it found warnings (buildx exits 1 then), else ExitOK.
func (a *App) printCall(b *kilnv1.Build) int {
	r := b.GetResult()
	fmt.Fprint(a.Stdout, r.GetCallOutput())
	if r.GetCheckWarnings() > 0 {
		return ExitFailed
	}
	return ExitOK
}
