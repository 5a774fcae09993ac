package agentproto

import (
	"fmt"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func logEv(step uint32, text string) *kilnv1.BuildEvent {
	return &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: step, Text: text}}}
}

func stepEv(step uint32) *kilnv1.BuildEvent {
	return &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_StepFinished{StepFinished: &kilnv1.StepFinished{Step: step}}}
}

// render writes events as comparable lines.
func render(evs []*kilnv1.BuildEvent) string {
	var b strings.Builder
	for _, ev := range evs {
		switch {
		case ev.GetLog() != nil && strings.HasPrefix(ev.GetLog().GetText(), "[kiln] log limit reached"):
			fmt.Fprintf(&b, "%d:MARKER ", ev.GetLog().GetStep())
		case ev.GetLog() != nil:
			fmt.Fprintf(&b, "%d:%s ", ev.GetLog().GetStep(), ev.GetLog().GetText())
		default:
			fmt.Fprintf(&b, "done%d ", ev.GetStepFinished().GetStep())
		}
	}
	return strings.TrimSpace(b.String())
}

func TestCutLog(t *testing.T) {
	batch := []*kilnv1.BuildEvent{logEv(1, "aaaa"), logEv(1, "bbbb"), stepEv(1), logEv(2, "cc"), logEv(2, "d"), stepEv(2)}
	tests := []struct {
		name          string
		before, limit uint64
		want          string
	}{
		{"within the limit", 0, 100, "1:aaaa 1:bbbb done1 2:cc 2:d done2"},
		{"exactly the limit", 0, 11, "1:aaaa 1:bbbb done1 2:cc 2:d done2"},
		{"cut in a later step: the marker is of the first line dropped", 0, 10, "1:aaaa 1:bbbb done1 2:cc 2:MARKER done2"},
		{"cut in the first line", 0, 3, "1:MARKER done1 done2"},
		{"earlier reports filled the limit to the byte", 20, 20, "1:MARKER done1 done2"},
		{"earlier reports passed the limit: no second marker", 21, 20, "done1 done2"},
		{"a line that would fit after the cut is not kept", 0, 9, "1:aaaa 1:bbbb done1 2:MARKER done2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := render(cutLog(batch, tt.before, tt.limit)); got != tt.want {
				t.Fatalf("cutLog(before %d, limit %d) = %s, want %s", tt.before, tt.limit, got, tt.want)
			}
		})
	}
	if got := render(batch); got != "1:aaaa 1:bbbb done1 2:cc 2:d done2" {
		t.Fatalf("cutLog changed its input: %s", got)
	}
}

func TestLogLimit(t *testing.T) {
	if got := LogLimit(nil); got != 64<<20 {
		t.Errorf("default limit %d", got)
	}
	if got := LogLimit(&kilnv1.TenantPolicy{LogMaxBytes: 5000}); got != 5000 {
		t.Errorf("tenant's limit %d, want 5000", got)
	}
	for n, want := range map[uint64]string{64 << 20: "64 MiB", 100000: "100000 bytes", 4096: "4 KiB", 2 << 30: "2 GiB"} {
		if got := LogLimitMarker(n); !strings.Contains(got, "the first "+want+" of output") {
			t.Errorf("marker for %d: %q, want it to say %s", n, got, want)
		}
	}
}
