package progress

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// threeSteps is a build of three steps; the second prints ten lines.
func threeSteps() []*kilnv1.BuildEvent {
	evs := []any{
		queued,
		&kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_ASSIGNED, Agent: "kilnd", Attempt: 1, Message: `assigned to agent "kilnd": it holds the lineage's cache`},
		running,
		&kilnv1.StepStarted{Step: 1, Total: 3, Instruction: "COPY . /src"},
		&kilnv1.StepFinished{Step: 1, Cached: true},
		&kilnv1.StepStarted{Step: 2, Total: 3, Instruction: "RUN make"},
	}
	for i := range 10 {
		evs = append(evs, &kilnv1.LogLine{Step: 2, Text: fmt.Sprintf("cc -c part%d.c", i)})
	}
	return events(1, append(evs,
		&kilnv1.StepFinished{Step: 2, Duration: durationpb.New(2500 * time.Millisecond)},
		&kilnv1.StepStarted{Step: 3, Total: 3, Instruction: "RUN make test"},
		&kilnv1.StepFinished{Step: 3, Duration: durationpb.New(1200 * time.Millisecond)},
		&kilnv1.PushedImage{Tag: "127.0.0.1:5000/x:1", Digest: "sha256:m1"},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:c1", Steps: 3, CachedSteps: 1}},
	)...)
}

// ttyRun drives a tty printer through evs with the clock at each event's
// time, plus after, into a screen columns wide.
type ttyRun struct {
	p      *Printer
	clock  *clock
	stderr *bytes.Buffer
	screen *screen
}

func newTTYRun(t *testing.T, columns, rows int, opts ...Option) *ttyRun {
	r := &ttyRun{clock: &clock{t: t0}, stderr: &bytes.Buffer{}, screen: newScreen(t, columns)}
	r.p = New(TTY, &bytes.Buffer{}, r.stderr, append([]Option{withClock(r.clock.now), WithContext(cancelled()), WithTerminal(true, columns, rows)}, opts...)...)
	return r
}

func (r *ttyRun) events(evs []*kilnv1.BuildEvent) {
	for _, ev := range evs {
		r.clock.t = ev.GetTime().AsTime()
		r.p.Event(ev)
	}
}

// text is the screen as it stands.
func (r *ttyRun) text() string {
	r.screen.write(r.stderr.String())
	r.stderr.Reset()
	return r.screen.text()
}

func TestTTYLiveView(t *testing.T) {
	r := newTTYRun(t, 80, 40)
	all := threeSteps()
	r.events(all[:14]) // step 2 has printed eight of its ten lines
	r.clock.t = r.clock.t.Add(700 * time.Millisecond)
	r.p.tick()
	want := `[+] Building 13.7s (1/3)
kiln: build b01 queued
kiln: assigned to agent "kilnd": it holds the lineage's cache
kiln: running on agent "kilnd" (attempt 1)
 => [1/3] COPY . /src                                               CACHED 0.0s
 => [2/3] RUN make                                                 RUNNING 8.7s
 => => # cc -c part2.c
 => => # cc -c part3.c
 => => # cc -c part4.c
 => => # cc -c part5.c
 => => # cc -c part6.c
 => => # cc -c part7.c
 => [3/3]                                                                QUEUED`
	if got := r.text(); got != want || r.screen.wraps != 0 {
		t.Fatalf("live screen (%d lines wrapped)\n%s\nwant\n%s", r.screen.wraps, got, want)
	}

	r.events(all[14:])
	r.p.Close()
	want = `[+] Building 20.0s (3/3) FINISHED
kiln: build b01 queued
kiln: assigned to agent "kilnd": it holds the lineage's cache
kiln: running on agent "kilnd" (attempt 1)
 => [1/3] COPY . /src                                               CACHED 0.0s
 => [2/3] RUN make                                                    DONE 2.5s
 => [3/3] RUN make test                                               DONE 1.2s
kiln: pushed 127.0.0.1:5000/x:1 sha256:m1
kiln: build b01 succeeded in 20.0s: sha256:c1 (3 steps, 1 cached)`
	if got := r.text(); got != want {
		t.Fatalf("final screen\n%s\nwant\n%s", got, want)
	}
}

func TestTTYFailure(t *testing.T) {
	r := newTTYRun(t, 100, 40)
	r.events(failed())
	r.p.Close()
	want := `[+] Building 8.0s (1/3) FAILED
kiln: build b01 queued
kiln: running on agent "kilnd" (attempt 1)
 => [1/3] RUN echo ok                                                                     DONE 0.1s
 => [2/3] RUN echo bad && false                                                          ERROR 3.0s
kiln: build b01 failed after 8.0s
------
 > [2/3] RUN echo bad && false:
bad
------
ERROR: process "/bin/sh -c echo bad && false" did not complete successfully: exit code: 1`
	if got := r.text(); got != want {
		t.Fatalf("final screen\n%s\nwant\n%s", got, want)
	}
}

func TestTTYFitsTheTerminal(t *testing.T) {
	const columns, rows = 40, 8
	r := newTTYRun(t, columns, rows) // the screen fails the test if a line wraps
	evs := []any{queued, running}
	for n := uint32(1); n <= 20; n++ {
		evs = append(evs,
			&kilnv1.StepStarted{Step: n, Total: 20, Instruction: "RUN " + strings.Repeat("very-long-command ", 5)},
			&kilnv1.LogLine{Step: n, Text: "output\twith a tab, \x1b[31mcolours\x1b[0m and a bell\a " + strings.Repeat("x", 100)},
		)
		if n < 20 {
			evs = append(evs, &kilnv1.StepFinished{Step: n, Duration: durationpb.New(time.Second)})
		}
	}
	r.events(events(1, evs...))
	r.p.tick()
	got := r.text()
	if r.screen.wraps != 0 {
		t.Errorf("%d lines of the view wrap", r.screen.wraps)
	}
	lines := strings.Split(got, "\n")
	if len(lines) > rows-1 {
		t.Errorf("the view takes %d rows of a %d-row terminal:\n%s", len(lines), rows, got)
	}
	if !strings.HasPrefix(lines[0], "[+] Building") || !strings.HasPrefix(lines[1], "kiln: build b01 queued") {
		t.Errorf("the header and the farm's lines are not kept at the top:\n%s", got)
	}
	if !strings.Contains(got, "RUNNING") || !strings.Contains(got, "=> => # output with a tab, colours") {
		t.Errorf("the running step and its output are not shown:\n%s", got)
	}
	if !strings.Contains(got, "…") {
		t.Errorf("long lines are not cut with an ellipsis:\n%s", got)
	}
}

func TestTTYRedrawsAtMostTenTimesASecond(t *testing.T) {
	r := newTTYRun(t, 80, 40)
	frames := func() int { return strings.Count(r.stderr.String(), "\x1b[J") }
	evs := threeSteps()
	for _, ev := range evs[:12] { // all within the same 100ms
		r.p.Event(ev)
	}
	if n := frames(); n != 1 {
		t.Fatalf("%d drawings for 12 events at once, want 1", n)
	}
	r.p.tick() // the ticker draws what changed since
	if n := frames(); n != 2 {
		t.Fatalf("%d drawings after a tick, want 2", n)
	}
	r.clock.t = r.clock.t.Add(viewInterval)
	r.p.Event(evs[12])
	if n := frames(); n != 3 {
		t.Fatalf("%d drawings after an event 100ms later, want 3", n)
	}
}

func TestTTYErrorsPrintAboveTheView(t *testing.T) {
	r := newTTYRun(t, 80, 40)
	r.events(threeSteps()[:6])
	r.p.Errorf("cancelling: %s", "boom")
	got := r.text()
	if !strings.HasPrefix(got, "ERROR: cancelling: boom\n[+] Building") {
		t.Fatalf("the error is not above the view:\n%s", got)
	}
}

// sgr matches a colour escape sequence.
var sgr = regexp.MustCompile(`\x1b\[[0-9;]*m`)

func TestColours(t *testing.T) {
	_, plain := render(Plain, failed(), WithColor(true))
	if !strings.Contains(plain, styleDone+"#1 DONE 0.1s"+styleReset) || !strings.Contains(plain, styleError+"ERROR: process") {
		t.Errorf("coloured plain output lacks blue DONE or red ERROR:\n%q", plain)
	}
	_, tty := renderLive(TTY, failed(), WithColor(true))
	if !strings.Contains(tty, styleError+" => [2/3] RUN echo bad") || !strings.Contains(tty, styleDone+" => [1/3] RUN echo ok") {
		t.Errorf("coloured tty output lacks a red ERROR or blue DONE step:\n%q", tty)
	}
}

// TestNoColor checks what NO_COLOR leaves: plain output without a single
// escape sequence, and a tty view that only moves the cursor.
func TestNoColor(t *testing.T) {
	env := func(k string) (string, bool) {
		if k == "NO_COLOR" {
			return "1", true
		}
		return "", false
	}
	if ColorEnabled(true, env) {
		t.Fatal("ColorEnabled with NO_COLOR=1")
	}
	if !ColorEnabled(true, func(string) (string, bool) { return "", true }) || ColorEnabled(false, func(string) (string, bool) { return "", false }) {
		t.Fatal("ColorEnabled: colours only on a terminal, and an empty NO_COLOR is unset")
	}
	color := ColorEnabled(true, env)
	for _, evs := range [][]*kilnv1.BuildEvent{succeeded(), failed(), withInternal(), parallel()} {
		_, plain := renderLive(Plain, evs, WithColor(color))
		if strings.Contains(plain, "\x1b") {
			t.Errorf("plain output with NO_COLOR holds an escape sequence:\n%q", plain)
		}
		_, tty := renderLive(TTY, evs, WithColor(color))
		if m := sgr.FindString(tty); m != "" {
			t.Errorf("tty output with NO_COLOR holds the colour %q:\n%q", m, tty)
		}
	}
}

func TestTTYLinesAfterTheSummary(t *testing.T) {
	r := newTTYRun(t, 80, 40)
	r.events(succeeded())
	r.p.Infof("wrote %s", "meta.json")
	r.p.Errorf("late")
	r.p.Close()
	if got := r.text(); !strings.HasSuffix(got, "(2 steps, 1 cached)\nkiln: wrote meta.json\nERROR: late") {
		t.Fatalf("lines written after the summary are not under it:\n%s", got)
	}
}
