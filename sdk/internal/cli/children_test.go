package cli

import (
	"bytes"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
)

// A multi-platform build's children's events print as buildx prints a
// multi-platform build's: steps numbered across the platforms, labelled
// with theirs, each step's lines after its number; the children's state
// changes and ends are left to the parent's log and the summary.
func TestChildEventsPrintLabelledWithTheirPlatform(t *testing.T) {
	var out bytes.Buffer
	pr := progress.New(progress.Plain, &bytes.Buffer{}, &out)
	f := &family{pr: pr, steps: map[childStep]uint32{}}
	ev := func(id string, attempt uint32, e *kilnv1.BuildEvent) *kilnv1.BuildEvent {
		e.BuildId, e.Attempt = id, attempt
		return e
	}
	started := func(step, total uint32, instr string) *kilnv1.BuildEvent {
		return &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_StepStarted{StepStarted: &kilnv1.StepStarted{Step: step, Total: total, Instruction: instr}}}
	}
	logLine := func(step uint32, text string) *kilnv1.BuildEvent {
		return &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: step, Text: text}}}
	}
	for _, e := range []struct {
		platform string
		ev       *kilnv1.BuildEvent
	}{
		{"linux/amd64", ev("amd", 1, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_RUNNING, Agent: "a"}}})},
		{"linux/amd64", ev("amd", 1, started(2, 2, "RUN uname -m"))},
		{"linux/arm64", ev("arm", 2, started(2, 2, "RUN uname -m"))},
		{"linux/arm64", ev("arm", 2, logLine(2, "aarch64"))},
		{"linux/amd64", ev("amd", 1, logLine(2, "x86_64"))},
		{"linux/arm64", ev("arm", 2, logLine(0, "kiln: context: 1 files"))},
		{"linux/arm64", ev("arm", 2, logLine(0, "engine says hi"))},
		{"linux/arm64", ev("arm", 2, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Pushed{Pushed: &kilnv1.PushedImage{Tag: "r/app:1", Digest: "sha256:b"}}})},
		{"linux/arm64", ev("arm", 2, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}})},
	} {
		if pb := f.child(e.platform, e.ev); pb != nil {
			if pb.GetAttempt() != 0 {
				t.Fatalf("child event printed at attempt %d: a child's attempts must not restart the parent's steps", pb.GetAttempt())
			}
			pr.Event(pb)
		}
	}
	pr.Close()
	want := strings.Join([]string{
		"#1 [linux/amd64 2/2] RUN uname -m",
		"#2 [linux/arm64 2/2] RUN uname -m",
		"#2 aarch64",
		"#1 x86_64",
		"[linux/arm64] engine says hi",
		"[linux/arm64] pushed r/app:1 sha256:b",
	}, "\n") + "\n"
	if out.String() != want {
		t.Fatalf("printed:\n%s\nwant:\n%s", out.String(), want)
	}
}
