package progress

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files with the output the printer writes now")

// internalLine is the agent's work-dir bookkeeping line, as it writes it.
const internalLine = "kiln: context: 3 files, 0.0 MB; fetched 1 blobs (0.0 MB) from the farm, 2 already on this agent; work dir w3: 1 entries written (0.0 MB), 0 removed, 2 kept in 4ms"

// withInternal is a build whose agent logs its bookkeeping.
func withInternal() []*kilnv1.BuildEvent {
	return events(1,
		queued,
		running,
		&kilnv1.LogLine{Text: internalLine},
		&kilnv1.LogLine{Text: "[internal] load build definition from Dockerfile"},
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN echo hi"},
		&kilnv1.LogLine{Step: 1, Text: "kiln: a step's output is never hidden"},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(300 * time.Millisecond)},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:c1", Steps: 1}},
	)
}

// parallel is a build whose two stages run at once, their steps' lines
// interleaved.
func parallel() []*kilnv1.BuildEvent {
	return events(1,
		queued,
		running,
		&kilnv1.StepStarted{Step: 1, Total: 3, Instruction: "RUN make a"},
		&kilnv1.StepStarted{Step: 2, Total: 3, Instruction: "RUN make b"},
		&kilnv1.LogLine{Step: 1, Text: "a1"},
		&kilnv1.LogLine{Step: 2, Text: "b1"},
		&kilnv1.LogLine{Text: "engine line"},
		&kilnv1.LogLine{Step: 1, Text: "a2"},
		&kilnv1.StepFinished{Step: 2, Duration: durationpb.New(4 * time.Second)},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(6 * time.Second)},
		&kilnv1.StepStarted{Step: 3, Total: 3, Instruction: "COPY --from=a / /"},
		&kilnv1.StepFinished{Step: 3, Cached: true},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:c1", Steps: 3, CachedSteps: 1}},
	)
}

// goldenCases are the plain outputs pinned in testdata: plain_success,
// plain_failure and plain_cancelled hold what plain mode printed before
// the tty view, rawjson and GitLab sections came, byte for byte.
var goldenCases = []struct {
	name   string
	events []*kilnv1.BuildEvent
	opts   []Option
}{
	{name: "plain_success", events: succeeded()},
	{name: "plain_failure", events: failed()},
	{name: "plain_cancelled", events: events(1, queued,
		&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_CANCELLED},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_CANCELLED})},
	{name: "plain_requeued", events: append(events(1,
		queued, running,
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
		&kilnv1.LogLine{Step: 1, Text: "attempt one"},
	), events(2,
		&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 2, Message: "agent lost"},
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(time.Second)},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:c2", Steps: 1}},
	)...)},
	{name: "plain_internal_hidden", events: withInternal()},
	{name: "plain_internal_debug", events: withInternal(), opts: []Option{WithDebug(true)}},
	{name: "plain_parallel", events: parallel()},
	{name: "gitlab_success", events: succeeded(), opts: []Option{WithGitLabSections(true)}},
	{name: "gitlab_failure", events: failed(), opts: []Option{WithGitLabSections(true)}},
	{name: "gitlab_parallel", events: parallel(), opts: []Option{WithGitLabSections(true)}},
	{name: "gitlab_requeued", events: append(events(1,
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
		&kilnv1.LogLine{Step: 1, Text: "attempt one"},
	), events(2,
		&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 2, Message: "agent lost"},
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(time.Second)},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:c2", Steps: 1}},
	)...), opts: []Option{WithGitLabSections(true)}},
}

// TestPlainGolden compares plain output with testdata/NAME.golden; run
// `go test -run TestPlainGolden -update` to rewrite them, and review the
// diff.
func TestPlainGolden(t *testing.T) {
	for _, tt := range goldenCases {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr := render(Plain, tt.events, tt.opts...)
			if stdout != "" {
				t.Errorf("plain mode wrote to stdout: %q", stdout)
			}
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(stderr), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if stderr != string(want) {
				t.Errorf("stderr differs from %s:\n%s\nwant\n%s", path, stderr, want)
			}
		})
	}
}

func TestInternalLinesHiddenExceptWithDebug(t *testing.T) {
	for _, mode := range []Mode{Plain, TTY, RawJSON, Quiet} {
		t.Run(string(mode), func(t *testing.T) {
			shown := visible(t, mode, withInternal())
			if strings.Contains(shown, "work dir") {
				t.Errorf("the agent's bookkeeping line is shown without --debug:\n%s", shown)
			}
			if mode == Quiet {
				return
			}
			if !strings.Contains(shown, "never hidden") {
				t.Errorf("a step's line that begins %q is hidden:\n%s", InternalPrefix, shown)
			}
			if shown := visible(t, mode, withInternal(), WithDebug(true)); !strings.Contains(shown, "work dir w3") {
				t.Errorf("--debug does not show the bookkeeping line:\n%s", shown)
			}
		})
	}
	// json is the event record: every event, as the farm keeps it.
	stdout, _ := render(JSON, withInternal())
	if !strings.Contains(stdout, "work dir w3") {
		t.Errorf("json mode dropped the bookkeeping line:\n%s", stdout)
	}
}

// renderLive renders evs with the printer's clock at each event's time,
// so the tty view draws every event, and returns what it wrote.
func renderLive(mode Mode, evs []*kilnv1.BuildEvent, opts ...Option) (stdout, stderr string) {
	c := &clock{t: evs[0].GetTime().AsTime()}
	var out, errb bytes.Buffer
	p := New(mode, &out, &errb, append([]Option{withClock(c.now), WithContext(cancelled())}, opts...)...)
	for _, ev := range evs {
		c.t = ev.GetTime().AsTime()
		p.Event(ev)
	}
	p.Close()
	return out.String(), errb.String()
}

// visible is all the text a mode shows of evs: what it writes, with
// rawjson's log data decoded.
func visible(t *testing.T, mode Mode, evs []*kilnv1.BuildEvent, opts ...Option) string {
	stdout, stderr := renderLive(mode, evs, opts...)
	if mode != RawJSON {
		return stdout + stderr
	}
	var b strings.Builder
	for _, st := range decodeRaw(t, stdout) {
		for _, l := range st.Logs {
			b.Write(l.Data)
		}
	}
	return b.String() + stderr
}

func TestInternal(t *testing.T) {
	tests := []struct {
		line *kilnv1.LogLine
		want bool
	}{
		{&kilnv1.LogLine{Text: internalLine}, true},
		{&kilnv1.LogLine{Text: "kiln: context: 5 files, 0.1 MB; fetched 4 blobs (0.1 MB) from the farm, 0 already on this agent"}, true},
		{&kilnv1.LogLine{Step: 2, Text: "kiln: printed by a RUN step"}, false},
		{&kilnv1.LogLine{Text: "[internal] load build definition from Dockerfile"}, false},
		{&kilnv1.LogLine{Text: "The push refers to repository [127.0.0.1:5000/x]"}, false},
		{&kilnv1.LogLine{Text: " kiln: indented"}, false},
	}
	for _, tt := range tests {
		if got := Internal(tt.line); got != tt.want {
			t.Errorf("Internal(%v) = %v, want %v", tt.line, got, tt.want)
		}
	}
}

// sectionMarker is a GitLab section marker as GitLab's job log documents
// it: \e[0Ksection_start:UNIX:NAME[options]\r\e[0KHEADER or
// \e[0Ksection_end:UNIX:NAME\r\e[0K.
var sectionMarker = regexp.MustCompile(`^\x1b\[0Ksection_(start|end):(\d+):([A-Za-z0-9_.-]+)(\[collapsed=true\])?\r\x1b\[0K(.*)$`)

func TestGitLabSectionsAreBalancedAndWellFormed(t *testing.T) {
	for _, tt := range goldenCases {
		if !strings.HasPrefix(tt.name, "gitlab_") {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			_, stderr := render(Plain, tt.events, tt.opts...)
			if headers := checkSections(t, stderr); len(headers) == 0 {
				t.Error("no section written")
			}
		})
	}
}

// checkSections checks that out's GitLab section markers are well formed
// and balanced, each section opened once, ended no earlier than it
// started, collapsed unless its step failed, with a header ending with
// the step's outcome and duration; it returns the headers.
func checkSections(t *testing.T, out string) (headers []string) {
	t.Helper()
	var open []string // names of open sections, innermost last
	starts := map[string]int64{}
	header := regexp.MustCompile(`^#\d+ .+ \((DONE \d+\.\ds|CACHED|[A-Z]+ after \d+\.\ds|[A-Z]+)\)$`)
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !strings.Contains(line, "section_") {
			if strings.ContainsAny(line, "\x1b\r") {
				t.Errorf("stray control characters in %q", line)
			}
			continue
		}
		m := sectionMarker.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("malformed section marker %q", line)
		}
		kind, name, text := m[1], m[3], m[5]
		at, _ := strconv.ParseInt(m[2], 10, 64)
		if kind == "start" {
			if _, seen := starts[name]; seen {
				t.Errorf("section %s opened twice", name)
			}
			open = append(open, name)
			starts[name] = at
			headers = append(headers, text)
			if !header.MatchString(text) {
				t.Errorf("section header %q does not end with the step's outcome and duration", text)
			}
			if strings.Contains(text, "ERROR") == (m[4] != "") {
				t.Errorf("section %q: a failed step's section must be expanded and every other collapsed", line)
			}
			continue
		}
		if text != "" {
			t.Errorf("section end %q carries text", line)
		}
		if len(open) == 0 || open[len(open)-1] != name {
			t.Fatalf("section_end of %s while %v are open", name, open)
		}
		open = open[:len(open)-1]
		if at < starts[name] {
			t.Errorf("section %s ends at %d, before its start %d", name, at, starts[name])
		}
	}
	if len(open) != 0 {
		t.Errorf("sections left open: %v", open)
	}
	return headers
}

// cancelled is a context already done: a printer given it runs no redraw
// ticker, so what it writes depends on its events alone.
func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestColorAndGitLabFromTheEnvironment(t *testing.T) {
	tests := []struct {
		name            string
		terminal        bool
		env             map[string]string
		sections, color bool
	}{
		{name: "terminal", terminal: true, color: true},
		{name: "terminal with NO_COLOR", terminal: true, env: map[string]string{"NO_COLOR": "1"}},
		{name: "terminal with an empty NO_COLOR", terminal: true, env: map[string]string{"NO_COLOR": ""}, color: true},
		{name: "pipe", terminal: false},
		{name: "GitLab CI", env: map[string]string{"GITLAB_CI": "true"}, sections: true},
		{name: "GITLAB_CI not true", env: map[string]string{"GITLAB_CI": "false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			// The options as kiln's commands give them (cli.newPrinter).
			_, stderr := render(Plain, failed(), WithColor(ColorEnabled(tt.terminal, lookup)), WithGitLabSections(GitLabCI(lookup)))
			if got := strings.Contains(stderr, "section_start:"); got != tt.sections {
				t.Errorf("sections %v, want %v:\n%q", got, tt.sections, stderr)
			}
			if got := sgr.MatchString(stderr); got != tt.color {
				t.Errorf("colours %v, want %v:\n%q", got, tt.color, stderr)
			}
		})
	}
}
