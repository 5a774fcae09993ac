package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// events numbers and timestamps a build's events, one second apart.
func events(attempt uint32, evs ...any) []*kilnv1.BuildEvent {
	var out []*kilnv1.BuildEvent
	for i, e := range evs {
		ev := &kilnv1.BuildEvent{
			Sequence: uint64(i + 1),
			Time:     timestamppb.New(t0.Add(time.Duration(i) * time.Second)),
			BuildId:  "b01",
			Attempt:  attempt,
		}
		switch e := e.(type) {
		case *kilnv1.StateChanged:
			ev.Event = &kilnv1.BuildEvent_State{State: e}
		case *kilnv1.LogLine:
			ev.Event = &kilnv1.BuildEvent_Log{Log: e}
		case *kilnv1.StepStarted:
			ev.Event = &kilnv1.BuildEvent_StepStarted{StepStarted: e}
		case *kilnv1.StepFinished:
			ev.Event = &kilnv1.BuildEvent_StepFinished{StepFinished: e}
		case *kilnv1.PushedImage:
			ev.Event = &kilnv1.BuildEvent_Pushed{Pushed: e}
		case *kilnv1.BuildFinished:
			ev.Event = &kilnv1.BuildEvent_Finished{Finished: e}
		default:
			panic(e)
		}
		out = append(out, ev)
	}
	return out
}

var (
	queued  = &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 1}
	running = &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_RUNNING, Agent: "kilnd", Attempt: 1}
)

func succeeded() []*kilnv1.BuildEvent {
	return events(1,
		queued,
		&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_ASSIGNED, Agent: "kilnd", Attempt: 1},
		running,
		&kilnv1.StepStarted{Step: 1, Total: 2, Instruction: "COPY . /src"},
		&kilnv1.StepFinished{Step: 1, Cached: true, Instruction: "COPY . /src"},
		&kilnv1.StepStarted{Step: 2, Total: 2, Instruction: "RUN echo hi"},
		&kilnv1.LogLine{Step: 2, Text: "hi\n"},
		&kilnv1.StepFinished{Step: 2, Duration: durationpb.New(1234 * time.Millisecond)},
		&kilnv1.PushedImage{Tag: "127.0.0.1:5000/x:1", Digest: "sha256:m1"},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Agent: "kilnd", Result: &kilnv1.BuildResult{
			ImageId: "sha256:c1", Steps: 2, CachedSteps: 1,
			Pushed: []*kilnv1.PushedImage{{Tag: "127.0.0.1:5000/x:1", Digest: "sha256:m1"}},
		}},
	)
}

func failed() []*kilnv1.BuildEvent {
	return events(1,
		queued,
		running,
		&kilnv1.StepStarted{Step: 1, Total: 3, Instruction: "RUN echo ok"},
		&kilnv1.LogLine{Step: 1, Text: "ok"},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(100 * time.Millisecond)},
		&kilnv1.StepStarted{Step: 2, Total: 3, Instruction: "RUN echo bad && false"},
		&kilnv1.LogLine{Step: 2, Text: "bad"},
		&kilnv1.LogLine{Step: 0, Text: "unrelated engine noise"},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_FAILED, Agent: "kilnd",
			Error: `process "/bin/sh -c echo bad && false" did not complete successfully: exit code: 1`},
	)
}

func render(mode Mode, evs []*kilnv1.BuildEvent, opts ...Option) (stdout, stderr string) {
	var out, errb bytes.Buffer
	p := New(mode, &out, &errb, opts...)
	for _, ev := range evs {
		p.Event(ev)
	}
	p.Close()
	return out.String(), errb.String()
}

func TestPrinter(t *testing.T) {
	tests := []struct {
		name       string
		mode       Mode
		events     []*kilnv1.BuildEvent
		wantStdout string
		wantStderr string
	}{
		{
			name:       "quiet success prints the pushed manifest digest",
			mode:       Quiet,
			events:     succeeded(),
			wantStdout: "sha256:m1\n",
		},
		{
			name: "quiet success without push prints the image id",
			mode: Quiet,
			events: events(1, &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED,
				Result: &kilnv1.BuildResult{ImageId: "sha256:c1"}}),
			wantStdout: "sha256:c1\n",
		},
		{
			name:   "quiet failure still shows the frame",
			mode:   Quiet,
			events: failed(),
			wantStderr: `------
 > [2/3] RUN echo bad && false:
bad
------
ERROR: process "/bin/sh -c echo bad && false" did not complete successfully: exit code: 1
`,
		},
		{
			name: "a requeued attempt starts its steps afresh",
			mode: Quiet,
			events: append(events(1,
				&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
				&kilnv1.LogLine{Step: 1, Text: "attempt one"},
			), events(2,
				&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 2, Message: "agent lost"},
				&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
				&kilnv1.LogLine{Step: 1, Text: "attempt two"},
				&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "exit code: 2"},
			)...),
			wantStderr: "------\n > [1/1] RUN make:\nattempt two\n------\nERROR: exit code: 2\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr := render(tt.mode, tt.events)
			if stdout != tt.wantStdout {
				t.Errorf("stdout\n%s\nwant\n%s", stdout, tt.wantStdout)
			}
			if stderr != tt.wantStderr {
				t.Errorf("stderr\n%s\nwant\n%s", stderr, tt.wantStderr)
			}
		})
	}
}

func TestPrinterRequeueLine(t *testing.T) {
	_, stderr := render(Plain, events(2, &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 2, Message: "agent lost"}))
	if want := "kiln: build b01 requeued (attempt 2): agent lost\n"; stderr != want {
		t.Fatalf("stderr %q, want %q", stderr, want)
	}
}

func TestPrinterFrameKeepsLastLines(t *testing.T) {
	evs := []any{&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN seq 100"}}
	for i := range 100 {
		evs = append(evs, &kilnv1.LogLine{Step: 1, Text: strings.Repeat("x", i%7) + "|"})
	}
	evs = append(evs, &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "boom"})
	_, stderr := render(Quiet, events(1, evs...))
	if n := strings.Count(stderr, "|\n"); n != keptLines {
		t.Fatalf("frame holds %d lines, want %d:\n%s", n, keptLines, stderr)
	}
}

func TestPrinterJSON(t *testing.T) {
	evs := succeeded()
	stdout, stderr := render(JSON, evs)
	if stderr != "" {
		t.Errorf("json mode wrote to stderr: %q", stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != len(evs) {
		t.Fatalf("%d lines for %d events", len(lines), len(evs))
	}
	for i, line := range lines {
		var got kilnv1.BuildEvent
		if err := protojson.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if !proto.Equal(&got, evs[i]) {
			t.Errorf("line %d decodes to %v, want %v", i, &got, evs[i])
		}
	}
}

func TestPrinterJSONFailureReportsOnStderr(t *testing.T) {
	stdout, stderr := render(JSON, failed())
	if strings.Count(stdout, "\n") != len(failed()) {
		t.Errorf("stdout holds %d lines, want one per event", strings.Count(stdout, "\n"))
	}
	if want := "ERROR: process \"/bin/sh -c echo bad && false\" did not complete successfully: exit code: 1\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{in: "auto", want: Auto}, {in: "plain", want: Plain}, {in: "tty", want: TTY},
		{in: "json", want: JSON}, {in: "rawjson", want: RawJSON}, {in: "quiet", want: Quiet},
		{in: "raw", wantErr: true}, {in: "", wantErr: true}, {in: "PLAIN", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMode(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseMode(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
	if Auto.Resolve(true) != TTY || Auto.Resolve(false) != Plain || JSON.Resolve(true) != JSON {
		t.Fatal("Resolve")
	}
}
