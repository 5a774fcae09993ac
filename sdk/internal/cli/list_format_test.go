package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// listedBuilds are a running build and a finished, pushed one with a
// sealed secret, as of now.
func listedBuilds(now time.Time) []*kilnv1.Build {
	ts := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }
	return []*kilnv1.Build{
		{
			Id: "b2", Tenant: "team-a", State: kilnv1.BuildState_BUILD_STATE_RUNNING, Agent: "builder-1",
			Spec:      &kilnv1.BuildSpec{Repository: "git.example/app", Tags: []string{"reg/app:2", "reg/app:latest", "reg/app:main"}},
			CreatedAt: ts(3 * time.Minute), StartedAt: ts(150 * time.Second),
		},
		{
			Id: "b1", Tenant: "team-a", State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Agent: "builder-2",
			Spec: &kilnv1.BuildSpec{
				Repository: "git.example/app", Tags: []string{"reg/app:1"}, Timeout: durationpb.New(time.Hour),
				Secrets: []*kilnv1.SealedSecret{{Id: "npmrc", KeyId: "k1", Sealed: []byte("SEALED-BYTES")}},
			},
			CreatedAt: ts(3 * time.Hour), StartedAt: ts(3*time.Hour - 5*time.Second), FinishedAt: ts(3*time.Hour - 17*time.Second - 5*time.Second),
			Result: &kilnv1.BuildResult{ImageId: "sha256:cfg", Steps: 5, CachedSteps: 3, Pushed: []*kilnv1.PushedImage{{Tag: "reg/app:1", Digest: "sha256:abc"}}},
		},
	}
}

func TestListFormat(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tests := []struct {
		name, format string
		want         []string // lines, each field separated by runs of spaces
	}{
		{name: "default table", format: "table", want: []string{
			"ID STATE REPOSITORY TAGS AGENT QUEUED DURATION CACHED",
			"b2 running git.example/app reg/app:2 (+2) builder-1 3m ago 2m30s -",
			"b1 succeeded git.example/app reg/app:1 builder-2 3h ago 17.0s 3/5",
		}},
		{name: "template", format: "{{.ID}} {{.Digest}}", want: []string{"b2 -", "b1 sha256:abc"}},
		{name: "template with escaped tab", format: `{{.ID}}\t{{.State}}`, want: []string{"b2 running", "b1 succeeded"}},
		{name: "table template", format: `table {{.ID}}\t{{.Cached}}\t{{upper .State}}`, want: []string{"ID CACHED STATE", "b2 - RUNNING", "b1 3/5 SUCCEEDED"}},
		{name: "record field", format: `{{.ID}} {{.Record.Spec.Timeout}}`, want: []string{"b2 <nil>", "b1 seconds:3600"}},
		{name: "functions", format: `{{join .Record.Spec.Tags ";"}} {{truncate .Repository 3}}`, want: []string{"reg/app:2;reg/app:latest;reg/app:main git", "reg/app:1 git"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parseListFormat(tt.format, defaultListTable)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := f.write(&buf, listedBuilds(now), now); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
			for i := range got {
				got[i] = strings.Join(strings.Fields(got[i]), " ")
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("--format %q printed\n%s\nwant\n%s", tt.format, buf.String(), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestListFormatJSON(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f, err := parseListFormat("json", defaultListTable)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := f.write(&buf, listedBuilds(now), now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "SEALED") || strings.Contains(buf.String(), "U0VBTEVE") { // base64 of "SEALED"
		t.Fatalf("json output carries the sealed bytes:\n%s", buf.String())
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one line per build:\n%s", buf.String())
	}
	var b struct {
		ID   string `json:"id"`
		Spec struct {
			Secrets []map[string]string `json:"secrets"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &b); err != nil {
		t.Fatalf("line %q: %v", lines[1], err)
	}
	if b.ID != "b1" || len(b.Spec.Secrets) != 1 || b.Spec.Secrets[0]["id"] != "npmrc" || b.Spec.Secrets[0]["keyId"] != "k1" {
		t.Fatalf("line %q: want build b1 with secret npmrc sealed to k1", lines[1])
	}
}

func TestListFormatInvalid(t *testing.T) {
	for _, format := range []string{"{{.ID", "{{.Nope}}", "table {{.Record.Nope}}", "{{truncate .ID}}"} {
		t.Run(format, func(t *testing.T) {
			_, err := parseListFormat(format, defaultListTable)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), "invalid --format") {
				t.Fatalf("parseListFormat(%q) = %v, want a usage error", format, err)
			}
		})
	}
}

func TestNewBuildRowTimedOut(t *testing.T) {
	r := newBuildRow(&kilnv1.Build{Id: "b", State: kilnv1.BuildState_BUILD_STATE_CANCELLED, TimedOut: true}, time.Now())
	if r.State != "timed out" {
		t.Fatalf("state %q, want %q", r.State, "timed out")
	}
}
