package engine

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	controlapi "github.com/moby/buildkit/api/services/control"
)

// traceParser turns BuildKit's progress (the StatusResponse messages the
// engine sends as "moby.buildkit.trace" aux messages of POST /build with
// version=2) into the same build events the classic builder's parser
// produces. It does no I/O and reads no clock: step durations come from the
// engine's own vertex timestamps.
//
// BuildKit reports vertices of a solve graph, not numbered steps. A vertex
// that is a Dockerfile instruction is named after its stage and position,
//
//	[stage-0 2/3] RUN echo hi
//	[builder 1/2] FROM 127.0.0.1:5000/kiln/busybox:1
//	[stage-1  1/14] COPY . /src (padded: the stage has ten or more)
//
// and becomes a kiln step, numbered in the order the engine starts them
// (stages run in parallel, so steps of two stages may interleave). Other
// vertices ("[internal] load build context", "exporting to image") are
// logged but are not steps. A vertex may be reported many times as it
// progresses; each transition is reported once.
//
// A vertex's name may be another build's: BuildKit runs a vertex identical
// in two concurrent solves (same op, same inputs) once and reports it to
// both under the name the first solve gave it (moby/buildkit#2820). Every
// build from one base image shares that image's FROM vertex, so a FROM's
// name is not trusted for the total (see total).
type traceParser struct {
	vertices map[string]*vertex // by digest
	stages   map[string]int     // stage name → its instruction count, as its other instructions name it
	froms    []*vertex          // FROM vertices, in the order named
	next     int                // last step number given out

	steps       int // instruction steps completed, FROM excepted
	cachedSteps int
	failure     *BuildError // the first vertex that failed

	events []event // returned by feed and finish, reused
}

// vertex is what the parser remembers of one vertex.
type vertex struct {
	name        string
	step        int    // kiln step number, 0 if the vertex is not an instruction
	instruction string // e.g. "RUN echo hi"
	from        bool
	stage       string // a FROM's stage and that stage's instruction count, as its name says
	stageTotal  int
	base        bool // another instruction takes it as an input: a FROM another stage builds on
	started     bool
	completed   bool
	partial     []byte // log output after the last newline
}

// stepName matches a vertex that is a Dockerfile instruction. BuildKit's
// Dockerfile frontend (dockerfile2llb's prefixCommand) names it
//
//	"[" [platform " "] [stage " "] fmt.Sprintf("%*d/%d] ", digits(total), index, total) instruction
//
// so in a stage of ten or more instructions the position is padded to the
// width of the total: "[ 1/15] RUN …", "[stage-1  1/14] COPY …",
// "[linux/arm64 builder 3/4] RUN …". The platform and stage are words without
// spaces; together they name the stage whose instructions the total counts.
var stepName = regexp.MustCompile(`^\[((?:[^\]\s]+ ){0,2}) *(\d+)/(\d+)\] (.+)$`)

// parseStepName splits a vertex name into the stage it belongs to (platform
// and stage name, "" for a lone unnamed stage), the stage's instruction count
// and the instruction; ok is false for vertices that are not instructions,
// such as "[internal] load build context".
func parseStepName(name string) (stage string, total int, instruction string, ok bool) {
	m := stepName.FindStringSubmatch(name)
	if m == nil {
		return "", 0, "", false
	}
	total, err := strconv.Atoi(m[3])
	if err != nil {
		return "", 0, "", false
	}
	return strings.TrimSuffix(m[1], " "), total, m[4], true
}

func newTraceParser() *traceParser {
	return &traceParser{vertices: map[string]*vertex{}, stages: map[string]int{}}
}

// feed takes one status message and returns the events it implies.
func (p *traceParser) feed(s *controlapi.StatusResponse) []event {
	var all []event
	p.each(s, func(evs []event) { all = append(all, evs...) })
	return all
}

// each takes one status message and hands fn the events it implies: those
// of its vertices, then those of each chunk of output, each slice valid
// until fn returns. A message may carry a megabyte of output (BuildKit
// splits its messages there), a hundred thousand short lines: handed over
// chunk by chunk, they are never all in memory at once.
func (p *traceParser) each(s *controlapi.StatusResponse, fn func([]event)) {
	p.events = p.events[:0]
	for _, v := range s.GetVertexes() {
		p.vertex(v)
	}
	fn(p.events)
	for _, l := range s.GetLogs() {
		p.events = p.events[:0]
		vx := p.vertices[l.GetVertex()]
		if vx == nil {
			vx = &vertex{}
			p.vertices[l.GetVertex()] = vx
		}
		p.logOutput(vx, l.GetMsg())
		fn(p.events)
	}
}

// finish flushes partial log lines; call it when the stream has ended.
func (p *traceParser) finish() []event {
	p.events = p.events[:0]
	for _, vx := range p.vertices {
		if len(vx.partial) > 0 {
			p.emit(event{kind: eventLog, step: vx.step, line: cleanLine(vx.partial)})
			vx.partial = nil
		}
	}
	return p.events
}

func (p *traceParser) vertex(v *controlapi.Vertex) {
	vx := p.vertices[v.GetDigest()]
	if vx == nil {
		vx = &vertex{}
		p.vertices[v.GetDigest()] = vx
	}
	if vx.name == "" && v.GetName() != "" {
		vx.name = v.GetName()
		if stage, n, instruction, ok := parseStepName(vx.name); ok {
			vx.instruction = instruction
			vx.from = isFrom(vx.instruction)
			vx.step = -1 // numbered when it starts
			if vx.from {
				vx.stage, vx.stageTotal = stage, n
				p.froms = append(p.froms, vx)
			} else if _, seen := p.stages[stage]; !seen {
				p.stages[stage] = n
			}
		}
	}
	if vx.instruction != "" && !vx.from {
		for _, in := range v.GetInputs() {
			base := p.vertices[in]
			if base == nil {
				base = &vertex{}
				p.vertices[in] = base
			}
			base.base = true
		}
	}
	if v.GetStarted() != nil && !vx.started {
		vx.started = true
		if vx.step == -1 {
			p.next++
			vx.step = p.next
			p.emit(event{kind: eventStepStarted, step: vx.step, total: max(p.total(), p.next), instruction: vx.instruction})
		}
		if vx.step <= 0 && vx.name != "" {
			p.emit(event{kind: eventLog, line: vx.name})
		}
	}
	if v.GetError() != "" && vx.step <= 0 && strings.HasPrefix(vx.name, cacheImportVertex) {
		if !vx.completed { // reported once: the build goes on without that cache
			vx.completed = true
			p.emit(event{kind: eventLog, line: cacheImportFailed + strings.TrimPrefix(vx.name, cacheImportVertex) + ": " + v.GetError()})
		}
		return
	}
	if v.GetError() != "" && p.failure == nil {
		if vx.step > 0 || !strings.Contains(v.GetError(), "context canceled") {
			p.failure = &BuildError{Step: max(vx.step, 0), Instruction: vx.instruction, Message: v.GetError()}
			if vx.step <= 0 {
				p.failure.Instruction = ""
				p.failure.Message = strings.TrimSpace(vx.name + ": " + v.GetError())
			}
		}
		return
	}
	if v.GetCompleted() != nil && !vx.completed && v.GetError() == "" {
		vx.completed = true
		if vx.step == -1 { // completed without having been started: a cache hit reported at once
			p.next++
			vx.step = p.next
			p.emit(event{kind: eventStepStarted, step: vx.step, total: max(p.total(), p.next), instruction: vx.instruction})
		}
		if vx.step > 0 {
			var took time.Duration
			if v.GetStarted() != nil {
				took = v.GetCompleted().AsTime().Sub(v.GetStarted().AsTime())
			}
			if !vx.from {
				p.steps++
				if v.GetCached() {
					p.cachedSteps++
				}
			}
			p.emit(event{kind: eventStepFinished, step: vx.step, instruction: vx.instruction, cached: v.GetCached(), took: took})
		}
	}
}

// total is the build's instruction count as far as the vertices named so
// far tell: each stage's count as its instructions other than FROM name it,
// plus, for a stage none of those names, the count its FROM's name gives —
// unless another instruction builds on that FROM (takes it as an input):
// then the FROM's name may be another solve's (see traceParser) and the
// stages built on it count themselves. A stage whose FROM only a COPY
// --from reads is then not counted; the step numbers, which the total
// never falls below, make up for it.
func (p *traceParser) total() int {
	n := 0
	for _, c := range p.stages {
		n += c
	}
	fromOnly := map[string]int{}
	for _, vx := range p.froms {
		if _, named := p.stages[vx.stage]; !named && !vx.base {
			fromOnly[vx.stage] = max(fromOnly[vx.stage], vx.stageTotal)
		}
	}
	for _, c := range fromOnly {
		n += c
	}
	return n
}

// BuildKit names the vertex that reads a --cache-from ref's cache
// manifest cacheImportVertex + ref. When that fails (a ref the registry
// does not have yet, as for a lineage's first warm start) the vertex
// reports the error but the build goes on without the cache: it is no
// build failure. The parser logs it as a line ParseCacheImportFailure
// reads.
const (
	cacheImportVertex = "importing cache manifest from "
	cacheImportFailed = "[kiln] cache not imported from "
)

// ParseCacheImportFailure reads a build's log line saying a cache import
// failed and the build went on without it: the ref and the engine's
// reason.
func ParseCacheImportFailure(line string) (ref, reason string, ok bool) {
	rest, ok := strings.CutPrefix(line, cacheImportFailed)
	if !ok {
		return "", "", false
	}
	ref, reason, ok = strings.Cut(rest, ": ")
	return ref, reason, ok
}

// logOutput splits a vertex's output into lines. A line that is
// BuildKit's clip notice is logged and reported as eventClipped too.
func (p *traceParser) logOutput(vx *vertex, msg []byte) {
	data := append(vx.partial, msg...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := cleanLine(data[:i])
		p.emit(event{kind: eventLog, step: max(vx.step, 0), line: line})
		if limit, ok := parseClipNotice(line); ok {
			p.emit(event{kind: eventClipped, step: max(vx.step, 0), line: limit})
		}
		data = data[i+1:]
	}
	for len(data) > maxLineBytes {
		cut := maxLineBytes
		for cut > 0 && !utf8.RuneStart(data[cut]) {
			cut--
		}
		if cut == 0 {
			cut = maxLineBytes
		}
		p.emit(event{kind: eventLog, step: max(vx.step, 0), line: cleanLine(data[:cut])})
		data = data[cut:]
	}
	vx.partial = append(vx.partial[:0:0], data...)
}

func cleanLine(b []byte) string {
	return strings.ToValidUTF8(strings.TrimRight(string(b), "\r"), "\uFFFD")
}

func (p *traceParser) emit(e event) { p.events = append(p.events, e) }
