// Package progress renders a build's event stream for a person (plain and
// tty modes, on stderr) or a program (json and rawjson modes on stdout,
// quiet mode's image id on stdout), the way buildx does.
package progress

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// keptLines bounds the log lines remembered per step for the failure frame.
const keptLines = 20

// Printer renders one build's events. It is safe for concurrent use: its
// exported methods hold mu, and so does the tty view's redraw ticker.
type Printer struct {
	mu     sync.Mutex
	mode   Mode
	stdout io.Writer
	stderr io.Writer
	// color, debug and gitlab are the options of the same names.
	color, debug, gitlab bool
	// width and height bound the tty view (0: unknown).
	width, height int
	// terminal is set when stderr is a terminal; the context progress of
	// tty mode is drawn only then.
	terminal bool
	// now reads the clock for the tty view's times and throttles.
	now func() time.Time
	// ctx bounds the tty view's ticker (WithContext); stopTicker stops it
	// and waits for it.
	ctx        context.Context
	stopTicker func()
	// sending is the phase of sending the build context being shown.
	sending contextProgress

	attempt uint32
	first   *timestamppb.Timestamp
	// last is the time of the latest event; seen is set by the first.
	last  time.Time
	seen  bool
	steps map[uint32]*step
	// started lists steps in the order they started.
	started []*step
	// status is the build's phase ("[+] Queued", "[+] Running on a1"),
	// shown in the tty view's header.
	status string

	// sections holds plain mode's GitLab sections (WithGitLabSections).
	sections *sections
	// view is tty mode's live view, nil in other modes.
	view *view
	// raw is rawjson mode's encoder, nil in other modes.
	raw *rawEncoder
}

// step is one Dockerfile instruction of the current attempt.
type step struct {
	n, total    uint32
	instruction string
	done        bool
	cached      bool
	// startedAt is the time of the step's started event; took is the
	// engine's duration of a finished step.
	startedAt time.Time
	took      time.Duration
	lines     []string
}

// New returns a Printer for mode (Auto must have been resolved) writing
// to stdout and stderr. In tty mode it owns a redraw ticker until Close.
func New(mode Mode, stdout, stderr io.Writer, opts ...Option) *Printer {
	p := &Printer{mode: mode, stdout: stdout, stderr: stderr, steps: map[uint32]*step{}, now: time.Now, ctx: context.Background()}
	for _, o := range opts {
		o(p)
	}
	switch mode {
	case TTY:
		p.view = &view{}
		p.startTicker()
	case RawJSON:
		p.raw = newRawEncoder(stdout)
	case Plain:
		if p.gitlab {
			p.sections = &sections{}
		}
	}
	return p
}

// Infof writes a "kiln: ..." progress line: in plain mode on a line of its
// own, in tty mode among the farm's lines at the top of the view.
func (p *Printer) Infof(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.infof(format, args...)
}

func (p *Printer) infof(format string, args ...any) {
	p.say("kiln: " + fmt.Sprintf(format, args...))
}

// Errorf writes an "ERROR: ..." line to stderr in every mode.
func (p *Printer) Errorf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errorf(format, args...)
}

func (p *Printer) errorf(format string, args ...any) {
	p.above(p.paint(styleError, "ERROR: "+fmt.Sprintf(format, args...)) + "\n")
}

// Close ends the output: the tty view is drawn one last time as it stands
// (if the build's end did not already collapse it) and its ticker stopped,
// and GitLab sections still open are closed.
func (p *Printer) Close() {
	p.mu.Lock()
	if p.view != nil && !p.view.closed {
		p.collapse(nil, nil)
	}
	p.closeSections("")
	stop := p.stopTicker
	p.stopTicker = nil
	p.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Event renders one build event.
func (p *Printer) Event(ev *kilnv1.BuildEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.mode {
	case JSON:
		b, err := protojson.Marshal(ev)
		if err != nil {
			p.errorf("encoding event %d: %v", ev.GetSequence(), err)
			return
		}
		fmt.Fprintf(p.stdout, "%s\n", b)
		p.reportFailure(ev)
		return
	case RawJSON:
		if l := ev.GetLog(); l != nil && !p.debug && Internal(l) {
			return
		}
		if err := p.raw.event(ev); err != nil {
			p.errorf("encoding event %d: %v", ev.GetSequence(), err)
		}
		p.reportFailure(ev)
		return
	}
	p.seen = true
	if p.first == nil && ev.GetTime() != nil {
		p.first = ev.GetTime()
	}
	if ev.GetTime() != nil {
		p.last = ev.GetTime().AsTime()
	}
	if ev.GetAttempt() > p.attempt {
		// A new attempt rebuilds from the first step.
		p.attempt = ev.GetAttempt()
		p.closeSections("interrupted")
		p.steps = map[uint32]*step{}
		p.started = nil
	}
	switch e := ev.GetEvent().(type) {
	case *kilnv1.BuildEvent_State:
		p.state(ev.GetBuildId(), e.State)
	case *kilnv1.BuildEvent_StepStarted:
		s := p.step(e.StepStarted.GetStep())
		s.total = e.StepStarted.GetTotal()
		s.instruction = e.StepStarted.GetInstruction()
		s.startedAt = ev.GetTime().AsTime()
		p.started = append(p.started, s)
		p.status = fmt.Sprintf("[+] Building %s %s", s.label(), s.instruction)
		if !p.openSection(s, ev.GetTime()) {
			p.plain(fmt.Sprintf("#%d %s", s.n, s.instruction), s.n)
		}
	case *kilnv1.BuildEvent_Log:
		if !p.debug && Internal(e.Log) {
			return
		}
		text := strings.TrimSuffix(e.Log.GetText(), "\n")
		if p.view != nil && Internal(e.Log) {
			p.say(text) // among the farm's lines, which the summary keeps
			return
		}
		if n := e.Log.GetStep(); n != 0 {
			s := p.step(n)
			s.lines = append(s.lines, text)
			if len(s.lines) > keptLines {
				s.lines = s.lines[len(s.lines)-keptLines:]
			}
		} else if p.view != nil {
			p.view.engine(text)
		}
		p.plain(text, e.Log.GetStep())
	case *kilnv1.BuildEvent_StepFinished:
		f := e.StepFinished
		s := p.step(f.GetStep())
		s.done, s.cached, s.took = true, f.GetCached(), f.GetDuration().AsDuration()
		if s.instruction == "" {
			s.instruction = f.GetInstruction()
		}
		if s.cached {
			p.plain(p.paint(styleDone, fmt.Sprintf("#%d CACHED", s.n)), s.n)
		} else {
			p.plain(p.paint(styleDone, fmt.Sprintf("#%d DONE %s", s.n, seconds(s.took))), s.n)
		}
		p.closeSection(s, ev.GetTime())
	case *kilnv1.BuildEvent_Pushed:
		p.status = "[+] Pushing " + e.Pushed.GetTag()
		line := fmt.Sprintf("kiln: pushed %s %s", e.Pushed.GetTag(), e.Pushed.GetDigest())
		if p.view != nil {
			p.view.results = append(p.view.results, line)
		}
		p.plain(line, 0)
	case *kilnv1.BuildEvent_Cache:
		p.say(cacheLine(e.Cache))
		return
	case *kilnv1.BuildEvent_Finished:
		p.finished(ev, e.Finished)
		return
	}
	p.redraw(false)
}

// reportFailure writes the ERROR line for a finished event of a build
// that did not succeed, in the modes whose stdout is for programs.
func (p *Printer) reportFailure(ev *kilnv1.BuildEvent) {
	if f := ev.GetFinished(); f != nil && f.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		p.errorf("%s", failureReason(ev.GetBuildId(), f))
	}
}

func (p *Printer) step(n uint32) *step {
	s, ok := p.steps[n]
	if !ok {
		s = &step{n: n}
		p.steps[n] = s
	}
	return s
}

func (p *Printer) state(buildID string, s *kilnv1.StateChanged) {
	var msg string
	switch s.GetState() {
	case kilnv1.BuildState_BUILD_STATE_QUEUED:
		if s.GetAttempt() > 1 {
			msg = fmt.Sprintf("build %s requeued (attempt %d)", buildID, s.GetAttempt())
		} else {
			msg = fmt.Sprintf("build %s queued", buildID)
		}
		p.status = "[+] Queued"
	case kilnv1.BuildState_BUILD_STATE_ASSIGNED:
		msg = fmt.Sprintf("assigned to agent %q (attempt %d)", s.GetAgent(), s.GetAttempt())
		p.status = fmt.Sprintf("[+] Assigned to %s", s.GetAgent())
	case kilnv1.BuildState_BUILD_STATE_RUNNING:
		msg = fmt.Sprintf("running on agent %q (attempt %d)", s.GetAgent(), s.GetAttempt())
		p.status = fmt.Sprintf("[+] Running on %s", s.GetAgent())
	default:
		// Terminal states are reported by the finished event.
		return
	}
	// The message, when the farm sends one, is the whole story (who took
	// the build and why, why it went back to the queue); it replaces the
	// generated line except for the queue lines, which name the build.
	if m := s.GetMessage(); m != "" {
		if s.GetState() == kilnv1.BuildState_BUILD_STATE_QUEUED {
			msg += ": " + m
		} else {
			msg = m
		}
	}
	p.infof("%s", msg)
}

func (p *Printer) finished(ev *kilnv1.BuildEvent, f *kilnv1.BuildFinished) {
	var took string
	if p.first != nil && ev.GetTime() != nil {
		took = seconds(ev.GetTime().AsTime().Sub(p.first.AsTime()))
	}
	id := ev.GetBuildId()
	r := f.GetResult()
	var msg string
	if f.GetState() == kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		msg = "build " + id + " succeeded"
		if took != "" {
			msg += " in " + took
		}
		msg += fmt.Sprintf(": %s (%d steps, %d cached)", r.GetImageId(), r.GetSteps(), r.GetCachedSteps())
	} else {
		msg = "build " + id + " " + stateName(f.GetState())
		if took != "" {
			msg += " after " + took
		}
	}
	failed := f.GetState() == kilnv1.BuildState_BUILD_STATE_FAILED
	if failed {
		p.closeSections("error")
	} else {
		p.closeSections(stateName(f.GetState()))
	}
	if p.view != nil {
		p.view.results = append(p.view.results, "kiln: "+msg)
		p.collapse(ev, f)
	}
	p.plain("kiln: "+msg, 0)
	if f.GetState() == kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		if p.mode == Quiet {
			id := r.GetImageId()
			if pushed := r.GetPushed(); len(pushed) > 0 && pushed[0].GetDigest() != "" {
				id = pushed[0].GetDigest()
			}
			fmt.Fprintln(p.stdout, id)
		}
		return
	}
	if failed {
		p.frame()
	}
	p.errorf("%s", failureReason(id, f))
}

// failureReason is the ERROR line's text for a build that did not succeed.
func failureReason(buildID string, f *kilnv1.BuildFinished) string {
	if f.GetError() != "" {
		return f.GetError()
	}
	return "build " + buildID + " " + stateName(f.GetState())
}

func stateName(s kilnv1.BuildState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BUILD_STATE_"))
}

// frame repeats the failing step's last output lines, as buildx does.
func (p *Printer) frame() {
	s := p.failingStep()
	if s == nil {
		return
	}
	var b strings.Builder
	b.WriteString("------\n")
	fmt.Fprintf(&b, " > %s %s:\n", s.label(), s.instruction)
	for _, l := range s.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("------\n")
	p.above(b.String())
}

// failingStep is the last step that started and did not finish.
func (p *Printer) failingStep() *step {
	for i := len(p.started) - 1; i >= 0; i-- {
		if !p.started[i].done {
			return p.started[i]
		}
	}
	return nil
}

func (s *step) label() string {
	if s.total == 0 {
		return fmt.Sprintf("[%d]", s.n)
	}
	return fmt.Sprintf("[%d/%d]", s.n, s.total)
}

// say writes one of kiln's own lines: in plain mode on stderr, in tty mode
// among the farm's lines of the view.
func (p *Printer) say(text string) {
	switch p.mode {
	case Plain:
		p.plain(text, 0)
	case TTY:
		if p.view.closed { // after the summary: a line of its own
			io.WriteString(p.stderr, text+"\n")
			return
		}
		p.view.farm = append(p.view.farm, text)
		p.redraw(false)
	}
}

// plain writes one line of plain mode to stderr, or to the GitLab section
// of step n while it is open.
func (p *Printer) plain(text string, n uint32) {
	if p.mode != Plain {
		return
	}
	if p.sections != nil && p.sections.add(n, text) {
		return
	}
	fmt.Fprintln(p.stderr, text)
}

// above writes text to stderr, in tty mode above the live view, which is
// drawn again under it.
func (p *Printer) above(text string) {
	if p.view != nil && !p.view.closed {
		p.view.clear(p.stderr)
		io.WriteString(p.stderr, text)
		p.redraw(true)
		return
	}
	io.WriteString(p.stderr, text)
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
