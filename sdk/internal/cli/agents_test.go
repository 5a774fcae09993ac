package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestWriteAgents(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var buf bytes.Buffer
	writeAgents(&buf, []*kilnv1.Agent{{
		Name: "builder-1", State: kilnv1.AgentState_AGENT_STATE_DRAINING, Slots: 2, BusySlots: 1,
		EngineVersion: "20.10.24", EngineApiVersion: "1.41", StorageDriver: "overlay2",
		Labels: map[string]string{"gpu": "none", "arch": "amd64"}, LastSeen: timestamppb.New(now.Add(-3 * time.Second)),
		Cache: &kilnv1.CacheSummary{Lineages: []string{"a", "b"}},
	}}, now)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one row:\n%s", buf.String())
	}
	for _, want := range []string{"builder-1", "draining", "1/2 busy", "20.10.24 (API 1.41)", "overlay2", "arch=amd64,gpu=none", "3s ago"} {
		if !strings.Contains(lines[1], want) {
			t.Fatalf("row %q lacks %q", lines[1], want)
		}
	}
}
