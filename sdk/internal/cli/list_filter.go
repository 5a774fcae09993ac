package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// stateNames are the names --state accepts, in the order builds go
// through them.
var stateNames = []string{"queued", "assigned", "running", "succeeded", "failed", "cancelled"}

// parseStates turns --state values (repeatable, each a comma-separated
// list, any case) into build states, each once.
func parseStates(values []string) ([]kilnv1.BuildState, error) {
	var out []kilnv1.BuildState
	seen := map[kilnv1.BuildState]bool{}
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			s, ok := kilnv1.BuildState_value["BUILD_STATE_"+strings.ToUpper(name)]
			if !ok || name == "unspecified" {
				return nil, &usageError{msg: fmt.Sprintf("invalid --state %q: use %s", name, strings.Join(stateNames, ", "))}
			}
			if st := kilnv1.BuildState(s); !seen[st] {
				seen[st] = true
				out = append(out, st)
			}
		}
	}
	return out, nil
}

// sinceLayouts are the times --since accepts besides a duration, as
// docker's --since does; the ones without a zone are local time.
var sinceLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"}

// parseSince turns --since into the earliest queue time to list: a
// duration back from now ("90m", "24h", "7d") or a time ("2026-12-06",
// "2026-12-06T09:00:00Z").
func parseSince(v string, now time.Time) (time.Time, error) {
	bad := func() (time.Time, error) {
		return time.Time{}, &usageError{msg: fmt.Sprintf(`invalid --since %q: want a duration back from now (30m, 24h, 7d) or a time (2006-01-02, 2006-01-02T15:04:05Z)`, v)}
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 {
			return bad()
		}
		return now.Add(-time.Duration(n * float64(24*time.Hour))), nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return bad()
		}
		return now.Add(-d), nil
	}
	for _, layout := range sinceLayouts {
		if t, err := time.ParseInLocation(layout, v, now.Location()); err == nil {
			return t, nil
		}
	}
	return bad()
}
