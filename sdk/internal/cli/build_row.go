package cli

import (
	"fmt"
	"strings"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// buildRow is one build as `kiln ls` shows it: the default table's columns
// and the fields a --format template reads ({{.ID}}, {{.State}}, …), all
// plain text; Record is the whole record for anything else
// ({{.Record.Spec.Target}}), its sealed values already removed.
type buildRow struct {
	ID         string
	Tenant     string
	State      string
	Repository string
	// Tags are all the build's tags, comma-separated; the default table
	// shows the first and how many more ({{short .Tags}}).
	Tags  string
	Agent string
	// Queued is how long ago the build was queued ("3m ago"); CreatedAt is
	// that time in RFC 3339.
	Queued    string
	CreatedAt string
	// Duration is how long the build ran, or has run so far.
	Duration string
	// Cached is "cached/steps" of a finished build's steps.
	Cached string
	// Digest is the first pushed tag's manifest digest; ImageID the
	// image's config digest.
	Digest  string
	ImageID string
	Error   string
	Record  *kilnv1.Build `json:"-"`
}

// headerRow holds the column names a `table` format prints as its header:
// the template runs once on it, so {{.ID}} heads its column with "ID".
var headerRow = buildRow{
	ID: "ID", Tenant: "TENANT", State: "STATE", Repository: "REPOSITORY", Tags: "TAGS", Agent: "AGENT",
	Queued: "QUEUED", CreatedAt: "CREATED AT", Duration: "DURATION", Cached: "CACHED", Digest: "DIGEST",
	ImageID: "IMAGE ID", Error: "ERROR",
}

// newBuildRow formats b for the listing at time now.
func newBuildRow(b *kilnv1.Build, now time.Time) buildRow {
	r := buildRow{
		ID:         b.GetId(),
		Tenant:     b.GetTenant(),
		State:      buildStateText(b),
		Repository: orDash(b.GetSpec().GetRepository()),
		Tags:       orDash(strings.Join(b.GetSpec().GetTags(), ",")),
		Agent:      orDash(b.GetAgent()),
		Queued:     "-",
		CreatedAt:  "-",
		Duration:   "-",
		Cached:     "-",
		Digest:     "-",
		ImageID:    orDash(b.GetResult().GetImageId()),
		Error:      b.GetError(),
		Record:     b,
	}
	if c := b.GetCreatedAt(); c != nil {
		r.Queued = ago(now.Sub(c.AsTime()))
		r.CreatedAt = c.AsTime().UTC().Format(time.RFC3339)
	}
	if s := b.GetStartedAt(); s != nil {
		end := now
		if f := b.GetFinishedAt(); f != nil {
			end = f.AsTime()
		}
		r.Duration = shortDuration(end.Sub(s.AsTime()))
	}
	if res := b.GetResult(); res != nil && res.GetSteps() > 0 {
		r.Cached = fmt.Sprintf("%d/%d", res.GetCachedSteps(), res.GetSteps())
	}
	if p := b.GetResult().GetPushed(); len(p) > 0 && p[0].GetDigest() != "" {
		r.Digest = p[0].GetDigest()
	}
	return r
}

// shortList turns a comma-separated list into its first item and how many
// more there are ("a:1 (+2)"); the default table shows TAGS so.
func shortList(list string) string {
	items := strings.Split(list, ",")
	if len(items) == 1 {
		return list
	}
	return fmt.Sprintf("%s (+%d)", items[0], len(items)-1)
}

// buildStateText is a build's state as the listing shows it: the state's
// name in lower case, "timed out" for a build the farm cancelled at its
// --timeout.
func buildStateText(b *kilnv1.Build) string {
	if b.GetTimedOut() {
		return "timed out"
	}
	return stateText(b.GetState())
}

// stateText is s's name in lower case ("running").
func stateText(s kilnv1.BuildState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BUILD_STATE_"))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is how long ago something happened, d before now, as a listing
// shows it: "12s ago", "5m ago", "3h ago", "2d ago".
func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

// shortDuration is d as a listing shows it: tenths of a second under a
// minute ("12.3s"), whole seconds above ("2m5s").
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}
