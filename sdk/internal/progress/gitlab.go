package progress

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// sections wraps each step of plain output in one of GitLab CI's
// collapsible job-log sections:
//
//	\e[0Ksection_start:UNIX_TIME:NAME[collapsed=true]\r\e[0KHEADER
//	… the step's lines …
//	\e[0Ksection_end:UNIX_TIME:NAME\r\e[0K
//
// A step's lines are held until it ends and written as one section, its
// header the step with its outcome and duration ("#2 RUN make (DONE
// 3.2s)"), its times those of the step's events, so GitLab shows the
// step's own duration. Holding them keeps sections whole when the steps
// of parallel stages interleave, at the price of a step's output showing
// once the step is over. A step that failed is left expanded.
type sections struct {
	open map[uint32]*section
}

// section is one open step's.
type section struct {
	name   string
	header string
	start  time.Time
	lines  []string
}

// openSection starts the section of step s and says whether it did
// (plain mode in GitLab CI only); the header line then belongs to it.
func (p *Printer) openSection(s *step, at *timestamppb.Timestamp) bool {
	if p.sections == nil {
		return false
	}
	if p.sections.open == nil {
		p.sections.open = map[uint32]*section{}
	}
	p.sections.open[s.n] = &section{
		name:   fmt.Sprintf("kiln_step_%d_%d", p.attempt, s.n),
		header: fmt.Sprintf("#%d %s", s.n, s.instruction),
		start:  p.eventTime(at),
	}
	return true
}

// add holds a line of step n's open section and says whether it did.
func (s *sections) add(n uint32, text string) bool {
	sec := s.open[n]
	if sec == nil {
		return false
	}
	sec.lines = append(sec.lines, text)
	return true
}

// closeSection writes the section of finished step s.
func (p *Printer) closeSection(s *step, at *timestamppb.Timestamp) {
	if p.sections == nil || p.sections.open[s.n] == nil {
		return
	}
	sec := p.sections.open[s.n]
	delete(p.sections.open, s.n)
	outcome := "DONE " + seconds(s.took)
	if s.cached {
		outcome = "CACHED"
	}
	sec.write(p.stderr, outcome, p.eventTime(at), true)
}

// closeSections writes every open section, for steps that end without
// finishing: the build failed ("error", left expanded), was cancelled, or
// its attempt was replaced ("interrupted"). The sections' end is the
// latest event's time.
func (p *Printer) closeSections(why string) {
	if p.sections == nil || len(p.sections.open) == 0 {
		return
	}
	if why == "" {
		why = "unfinished"
	}
	end := p.last
	if end.IsZero() {
		end = p.now()
	}
	ns := make([]uint32, 0, len(p.sections.open))
	for n := range p.sections.open {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	for _, n := range ns {
		sec := p.sections.open[n]
		outcome := strings.ToUpper(why)
		if end.After(sec.start) {
			outcome += " after " + seconds(end.Sub(sec.start))
		}
		sec.write(p.stderr, outcome, end, why != "error")
	}
	clear(p.sections.open)
}

// write writes the whole section: header with outcome, lines, end.
func (sec *section) write(w io.Writer, outcome string, end time.Time, collapsed bool) {
	var b strings.Builder
	opt := ""
	if collapsed {
		opt = "[collapsed=true]"
	}
	fmt.Fprintf(&b, "\x1b[0Ksection_start:%d:%s%s\r\x1b[0K%s (%s)\n", sec.start.Unix(), sec.name, opt, sec.header, outcome)
	for _, l := range sec.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "\x1b[0Ksection_end:%d:%s\r\x1b[0K\n", max(end.Unix(), sec.start.Unix()), sec.name)
	io.WriteString(w, b.String())
}

// eventTime is an event's time, or the clock's when it has none.
func (p *Printer) eventTime(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return p.now()
	}
	return t.AsTime()
}
