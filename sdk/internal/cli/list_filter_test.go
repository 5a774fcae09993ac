package cli

import (
	"slices"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestParseStates(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []kilnv1.BuildState
		bad    bool
	}{
		{name: "none"},
		{name: "one", values: []string{"running"}, want: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_RUNNING}},
		{name: "comma list, any case, once each", values: []string{"Queued, running", "queued"},
			want: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_QUEUED, kilnv1.BuildState_BUILD_STATE_RUNNING}},
		{name: "every state", values: []string{"queued,assigned,running,succeeded,failed,cancelled"},
			want: []kilnv1.BuildState{1, 2, 3, 4, 5, 6}},
		{name: "misspelt", values: []string{"runing"}, bad: true},
		{name: "unspecified", values: []string{"unspecified"}, bad: true},
		{name: "empty item", values: []string{"running,"}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStates(tt.values)
			if tt.bad {
				if err == nil {
					t.Fatalf("parseStates(%q) = %v, want an error", tt.values, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseStates(%q) = %v, %v; want %v", tt.values, got, err, tt.want)
			}
		})
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{in: "24h", want: now.Add(-24 * time.Hour)},
		{in: "90m", want: now.Add(-90 * time.Minute)},
		{in: "7d", want: now.Add(-7 * 24 * time.Hour)},
		{in: "1.5d", want: now.Add(-36 * time.Hour)},
		{in: "2026-12-01", want: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-12-01T08:30:00Z", want: time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC)},
		{in: "2026-12-01T08:30:00+01:00", want: time.Date(2026, 12, 1, 7, 30, 0, 0, time.UTC)},
		{in: "2026-12-01T08:30", want: time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC)},
		{in: "-1h", bad: true},
		{in: "yesterday", bad: true},
		{in: "d", bad: true},
		{in: "12/01/2026", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSince(tt.in, now)
			if tt.bad {
				if err == nil {
					t.Fatalf("parseSince(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("parseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}
