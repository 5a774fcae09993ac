// Package buildtimeout is the rule for a build's timeout
// (BuildSpec.timeout): the CLI and SDK check it before they send a build,
// the gateway when it accepts one, and the scheduler words the error of a
// build it cancels for it.
package buildtimeout

import (
	"fmt"
	"time"

	"github.com/kilnbuild/kiln/proto/rules"
)

// Max is the longest timeout a build may ask for.
const Max = 24 * time.Hour

// Check reports whether d is a timeout a build may ask for: positive and
// at most Max. Its errors match rules.ErrInvalid.
func Check(d time.Duration) error {
	switch {
	case d <= 0:
		return rules.Invalidf("build timeout %s is not positive: give a duration such as 30m, or none for no limit", d)
	case d > Max:
		return rules.Invalidf("build timeout %s is longer than the farm's limit of %s", d, Max)
	}
	return nil
}

// Message is the error of a build the farm cancelled because its timeout
// d passed: "timed out after 10m0s".
func Message(d time.Duration) string {
	return fmt.Sprintf("timed out after %s", d)
}
