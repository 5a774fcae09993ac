// Package progress renders a build's event stream for a person (plain and
// tty modes, on stderr) or a program (json mode on stdout, quiet mode's
// image id on stdout), the way buildx does.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// keptLines bounds the log lines remembered per step for the failure frame.
const keptLines = 20

// Printer renders one build's events. It is safe for concurrent use: its
// exported methods hold mu.
type Printer struct {
	mu     sync.Mutex
	mode   Mode
	stdout io.Writer
	stderr io.Writer
	// width bounds the tty status line (0: 80 columns).
	width int
	// terminal is set when stderr is a terminal; the context progress line
	// is drawn only then.
	terminal bool
	// now reads the clock that throttles the context progress line.
	now func() time.Time
	// sending is the phase of sending the build context being shown.
	sending contextProgress

	attempt uint32
	first   *timestamppb.Timestamp
	steps   map[uint32]*step
	// started lists steps in the order they started.
	started []*step
	status  string
	shown   bool
}

// step is one Dockerfile instruction of the current attempt.
type step struct {
	n, total    uint32
	instruction string
	done        bool
	lines       []string
}

// New returns a Printer for mode (Auto must have been resolved) writing
// to stdout and stderr.
func New(mode Mode, stdout, stderr io.Writer) *Printer {
	return &Printer{mode: mode, stdout: stdout, stderr: stderr, steps: map[uint32]*step{}, now: time.Now}
}

// SetWidth sets the terminal width the tty status line must fit.
func (p *Printer) SetWidth(columns int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.width = columns
}

// Infof writes a "kiln: ..." progress line in plain and tty modes.
func (p *Printer) Infof(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.infof(format, args...)
}

func (p *Printer) infof(format string, args ...any) {
	if p.mode != Plain && p.mode != TTY {
		return
	}
	p.line("kiln: " + fmt.Sprintf(format, args...))
}

// Errorf writes an "ERROR: ..." line to stderr in every mode.
func (p *Printer) Errorf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errorf(format, args...)
}

func (p *Printer) errorf(format string, args ...any) {
	p.clearStatus()
	fmt.Fprintf(p.stderr, "ERROR: %s\n", fmt.Sprintf(format, args...))
	p.drawStatus()
}

// Close removes the tty status line.
func (p *Printer) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.close()
}

func (p *Printer) close() {
	p.clearStatus()
	p.status = ""
}

// Event renders one build event.
func (p *Printer) Event(ev *kilnv1.BuildEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == JSON {
		b, err := protojson.Marshal(ev)
		if err != nil {
			p.errorf("encoding event %d: %v", ev.GetSequence(), err)
			return
		}
		fmt.Fprintf(p.stdout, "%s\n", b)
		if f := ev.GetFinished(); f != nil && f.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			p.errorf("%s", failureReason(ev.GetBuildId(), f))
		}
		return
	}
	if p.first == nil && ev.GetTime() != nil {
		p.first = ev.GetTime()
	}
	if ev.GetAttempt() > p.attempt {
		// A new attempt rebuilds from the first step.
		p.attempt = ev.GetAttempt()
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
		p.started = append(p.started, s)
		p.status = fmt.Sprintf("[+] Building %s %s", s.label(), s.instruction)
		p.line(fmt.Sprintf("#%d %s", s.n, s.instruction))
	case *kilnv1.BuildEvent_Log:
		text := strings.TrimSuffix(e.Log.GetText(), "\n")
		if n := e.Log.GetStep(); n != 0 {
			s := p.step(n)
			s.lines = append(s.lines, text)
			if len(s.lines) > keptLines {
				s.lines = s.lines[len(s.lines)-keptLines:]
			}
		}
		p.line(text)
	case *kilnv1.BuildEvent_StepFinished:
		s := p.step(e.StepFinished.GetStep())
		s.done = true
		if s.instruction == "" {
			s.instruction = e.StepFinished.GetInstruction()
		}
		if e.StepFinished.GetCached() {
			p.line(fmt.Sprintf("#%d CACHED", s.n))
		} else {
			p.line(fmt.Sprintf("#%d DONE %s", s.n, seconds(e.StepFinished.GetDuration().AsDuration())))
		}
	case *kilnv1.BuildEvent_Pushed:
		p.status = "[+] Pushing " + e.Pushed.GetTag()
		p.line(fmt.Sprintf("kiln: pushed %s %s", e.Pushed.GetTag(), e.Pushed.GetDigest()))
	case *kilnv1.BuildEvent_Finished:
		p.finished(ev, e.Finished)
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
	switch f.GetState() {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		msg := "build " + id + " succeeded"
		if took != "" {
			msg += " in " + took
		}
		msg += fmt.Sprintf(": %s (%d steps, %d cached)", r.GetImageId(), r.GetSteps(), r.GetCachedSteps())
		p.infof("%s", msg)
		p.close()
		if p.mode == Quiet {
			id := r.GetImageId()
			if pushed := r.GetPushed(); len(pushed) > 0 && pushed[0].GetDigest() != "" {
				id = pushed[0].GetDigest()
			}
			fmt.Fprintln(p.stdout, id)
		}
	default:
		msg := "build " + id + " " + stateName(f.GetState())
		if took != "" {
			msg += " after " + took
		}
		p.infof("%s", msg)
		p.close()
		if f.GetState() == kilnv1.BuildState_BUILD_STATE_FAILED {
			p.frame()
		}
		p.errorf("%s", failureReason(id, f))
	}
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
	io.WriteString(p.stderr, b.String())
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

// line writes one progress line to stderr in plain and tty modes.
func (p *Printer) line(text string) {
	if p.mode != Plain && p.mode != TTY {
		return
	}
	p.clearStatus()
	fmt.Fprintln(p.stderr, text)
	p.drawStatus()
}

func (p *Printer) clearStatus() {
	if p.shown {
		io.WriteString(p.stderr, "\r\x1b[2K")
		p.shown = false
	}
}

func (p *Printer) drawStatus() {
	if p.mode != TTY || p.status == "" {
		return
	}
	width := p.width
	if width <= 0 {
		width = 80
	}
	s := p.status
	if utf8.RuneCountInString(s) > width-1 {
		r := []rune(s)
		s = string(r[:max(width-2, 0)]) + "…"
	}
	io.WriteString(p.stderr, s)
	p.shown = true
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
