package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/docker/docker/pkg/jsonmessage"
)

// maxLineBytes bounds a log line: a longer line is cut into lines of at most
// this size, so a command printing megabytes without a newline cannot grow
// the parser's buffer without end.
const maxLineBytes = 64 << 10

// eventKind says what a build event reports.
type eventKind int

const (
	eventLog eventKind = iota + 1
	eventStepStarted
	eventStepFinished
	// eventClipped: BuildKit dropped some of the step's output at its step
	// log limit (line holds the limit, e.g. "200KiB/s").
	eventClipped
)

// event is one thing the classic builder's stream told: a log line, or a step
// starting or finishing. Build turns events into Reporter calls and adds the
// timing, which the parser does not know.
type event struct {
	kind        eventKind
	step        int
	total       int           // eventStepStarted
	instruction string        // eventStepStarted, eventStepFinished
	cached      bool          // eventStepFinished
	took        time.Duration // eventStepFinished, when the engine timed the step (BuildKit)
	line        string        // eventLog; eventClipped: the limit
}

// streamParser turns the JSON message stream of the classic builder (the
// body of POST /build with version=1) into build events, counts steps and
// cache hits, and remembers the image ID and the failure. It does no I/O and
// reads no clock.
//
// The stream interleaves the engine's own lines with the output of the
// step's container, all as "stream" text split at arbitrary points:
//
//	Step 2/5 : RUN echo hi        starts step 2 of 5 (logged)
//	 ---> Using cache             step 2 is a cache hit (dropped)
//	 ---> Running in 2b6b59dc3098 a container runs step 2 (dropped)
//	hi                            the container's output (logged)
//	Removing intermediate container 2b6b59dc3098   (dropped)
//	 ---> 243b4e97f002            the step's image (dropped)
//	Successfully built 243b4e97f002                (logged)
//
// While a step's container runs, every line is its output, even one that
// looks like an engine line, so a command cannot fake a step or a cache hit.
// The " ---> …" and "Removing intermediate container" lines are dropped from
// the log: Reporter's step events carry what they say.
type streamParser struct {
	partial []byte // stream text after the last newline

	step        int    // current step, 1-based; 0 before the first
	total       int    // steps the engine announced, from "Step N/M"
	instruction string // current step's instruction, e.g. "RUN echo hi"
	inStage     bool   // a FROM has been seen: steps belong to a stage
	counted     bool   // current step counts toward steps (in a stage, not FROM)
	cached      bool   // current step printed "Using cache"
	container   string // ID of the container running the current step, until removed
	ran         bool   // a container has run for the current step

	steps       int
	cachedSteps int
	imageID     string      // the last aux ID: the final stage's image
	failure     *BuildError // the error message that ended the stream

	events []event // returned by feed and finish, reused
}

var (
	stepLine    = regexp.MustCompile(`^Step ([0-9]{1,9})/([0-9]{1,9}) : (.*)$`)
	imageIDLine = regexp.MustCompile(`^ ---> [0-9a-f]{12,64}$`)
)

const (
	usingCache   = " ---> Using cache"
	runningIn    = " ---> Running in "
	removingPref = "Removing intermediate container "
)

// feed consumes one message and returns the events it completes. The slice
// is valid until the next call.
func (p *streamParser) feed(m *jsonmessage.JSONMessage) []event {
	p.events = p.events[:0]
	if p.failure != nil {
		return nil
	}
	if m.Stream != "" {
		p.stream(m.Stream)
	}
	if line, ok := statusLine(m); ok {
		p.log(line)
	}
	if m.Aux != nil {
		var aux struct{ ID string }
		if json.Unmarshal(*m.Aux, &aux) == nil && strings.HasPrefix(aux.ID, "sha256:") {
			p.imageID = aux.ID
		}
	}
	if msg := errorMessage(m); msg != "" {
		p.flush()
		p.failure = &BuildError{Step: p.step, Instruction: p.instruction, Message: msg}
	}
	return p.events
}

// finish ends the stream: it flushes an unfinished line and, if the build did
// not fail, finishes the last step.
func (p *streamParser) finish() []event {
	p.events = p.events[:0]
	p.flush()
	if p.failure == nil && p.step > 0 {
		p.emit(event{kind: eventStepFinished, step: p.step, instruction: p.instruction, cached: p.cached})
	}
	return p.events
}

func (p *streamParser) stream(s string) {
	// The engine writes "Removing intermediate container <id>" as a message of
	// its own right after the container exits, also when the output did not
	// end in a newline: that output is a line of its own.
	if p.container != "" && len(p.partial) > 0 && s == removingPref+p.container+"\n" {
		p.flush()
	}
	p.partial = append(p.partial, s...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		switch {
		case i >= 0 && i <= maxLineBytes:
			p.line(string(bytes.TrimSuffix(p.partial[:i], []byte("\r"))))
			p.partial = p.partial[i+1:]
		case len(p.partial) > maxLineBytes:
			// Cut an overlong line at a rune boundary.
			cut := maxLineBytes
			for cut > maxLineBytes-utf8.UTFMax && !utf8.RuneStart(p.partial[cut]) {
				cut--
			}
			p.line(string(p.partial[:cut]))
			p.partial = p.partial[cut:]
		default:
			return
		}
	}
}

func (p *streamParser) flush() {
	if len(p.partial) > 0 {
		p.line(string(bytes.TrimSuffix(p.partial, []byte("\r"))))
		p.partial = nil
	}
}

// line handles one complete line of stream text.
func (p *streamParser) line(l string) {
	if p.container != "" {
		if l == removingPref+p.container {
			p.container = ""
			return
		}
		p.log(l) // the container's output, whatever it looks like
		return
	}
	if n, total, instr, ok := p.nextStep(l); ok {
		p.startStep(n, total, instr)
		p.log(l)
		return
	}
	switch {
	case p.step == 0:
	case l == usingCache && !p.ran && !p.cached:
		p.cached = true
		if p.counted {
			p.cachedSteps++
		}
		return
	case strings.HasPrefix(l, runningIn) && !p.cached:
		// ONBUILD triggers run several containers in one step, one at a time.
		if id := strings.TrimPrefix(l, runningIn); id != "" {
			p.container, p.ran = id, true
			return
		}
	case imageIDLine.MatchString(l):
		return
	}
	if l == "" {
		return // the engine's blank lines carry nothing
	}
	p.log(l)
}

// nextStep reports whether l announces the step after the current one.
func (p *streamParser) nextStep(l string) (n, total int, instruction string, ok bool) {
	m := stepLine.FindStringSubmatch(l)
	if m == nil {
		return 0, 0, "", false
	}
	n, _ = strconv.Atoi(m[1])
	total, _ = strconv.Atoi(m[2])
	if n != p.step+1 || n > total || (p.total != 0 && total != p.total) {
		return 0, 0, "", false
	}
	return n, total, m[3], true
}

func (p *streamParser) startStep(n, total int, instruction string) {
	if p.step > 0 {
		p.emit(event{kind: eventStepFinished, step: p.step, instruction: p.instruction, cached: p.cached})
	}
	from := isFrom(instruction)
	if from {
		p.inStage = true
	}
	p.step, p.total, p.instruction = n, total, instruction
	p.counted = p.inStage && !from
	p.cached, p.ran, p.container = false, false, ""
	if p.counted {
		p.steps++
	}
	p.emit(event{kind: eventStepStarted, step: n, total: total, instruction: instruction})
}

// isFrom reports whether a Dockerfile instruction is a FROM.
func isFrom(instruction string) bool {
	keyword, _, _ := strings.Cut(strings.TrimSpace(instruction), " ")
	return strings.EqualFold(keyword, "FROM")
}

func (p *streamParser) log(line string) {
	p.emit(event{kind: eventLog, step: p.step, line: line})
}

func (p *streamParser) emit(e event) { p.events = append(p.events, e) }

// statusLine renders a status message (image pulls, pushes) as a log line;
// progress-bar updates render as nothing.
func statusLine(m *jsonmessage.JSONMessage) (string, bool) {
	if m.Status == "" || m.ProgressMessage != "" {
		return "", false
	}
	if pr := m.Progress; pr != nil && (pr.Current != 0 || pr.Total != 0) {
		return "", false
	}
	line := strings.TrimRight(m.Status, "\r\n")
	if m.ID != "" {
		line = m.ID + ": " + line
	}
	return line, true
}

// errorMessage returns the error a message carries, or "".
func errorMessage(m *jsonmessage.JSONMessage) string {
	if m.Error != nil && m.Error.Message != "" {
		return m.Error.Message
	}
	return m.ErrorMessage
}

// decodeMessages calls fn for each JSON message in an Engine API stream
// until the stream ends (nil), fn fails (its error), or the stream breaks.
func decodeMessages(r io.Reader, fn func(*jsonmessage.JSONMessage) error) error {
	dec := json.NewDecoder(r)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := fn(&m); err != nil {
			return err
		}
	}
}
