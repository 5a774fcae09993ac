package progress

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"golang.org/x/term"
)

const (
	// viewInterval rate-limits redraws of the tty view to ten a second;
	// the ticker redraws at that pace too, for the running times.
	viewInterval = 100 * time.Millisecond
	// tailLines is how many of a running step's last output lines the
	// view shows under it.
	tailLines = 6
	// engineLines is how many of the engine's last lines of no step
	// ("[internal] load build context", push progress) the view shows.
	engineLines = 3
	// defaultColumns and defaultRows are the size the view fits when the
	// terminal's is unknown.
	defaultColumns = 80
	defaultRows    = 30
)

// view is tty mode's live view of a build, drawn at the bottom of stderr
// and redrawn in place (the cursor moved up over the last drawing):
//
//	[+] Building 4.2s (2/3)
//	context: 3 files, 0.0 MB, 0.0 MB uploaded (100.0% already on the farm)
//	kiln: build b1 queued
//	kiln: assigned to agent "a1" (attempt 1): holds the lineage's cache
//	 => [1/3] COPY . /src                                     CACHED 0.0s
//	 => [2/3] RUN make                                       RUNNING 3.1s
//	 => => # cc -o app main.c
//	 => [3/3]                                                 QUEUED
//
// At the build's end it collapses to a summary: the farm's lines, one line
// per step with DONE, CACHED or ERROR and its time, what was pushed and
// the result. Lines are cut to the terminal's width so none wraps, and the
// view to its height, oldest steps first.
type view struct {
	// farm holds kiln's and the farm's own lines, shown at the top.
	farm []string
	// engineTail holds the engine's last lines of no step.
	engineTail []string
	// results holds the pushed images' lines.
	results []string
	// drawn is how many rows the last drawing took; 0 when nothing of
	// the view is on the screen.
	drawn    int
	lastDraw time.Time
	// dirty is set when something changed since the last drawing.
	dirty bool
	// closed is set once the view collapsed to its summary.
	closed bool
}

func (v *view) engine(text string) {
	v.engineTail = append(v.engineTail, text)
	if len(v.engineTail) > engineLines {
		v.engineTail = v.engineTail[len(v.engineTail)-engineLines:]
	}
}

// clear removes the view from the screen, leaving the cursor where its
// first row was.
func (v *view) clear(w io.Writer) {
	if v.drawn > 0 {
		fmt.Fprintf(w, "\x1b[%dA\r\x1b[J", v.drawn)
		v.drawn = 0
	}
}

// startTicker starts the goroutine that redraws the view ten times a
// second, so running times move without events; Close stops it.
func (p *Printer) startTicker() {
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(viewInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.tick()
			}
		}
	}()
	p.stopTicker = func() {
		cancel()
		<-done
	}
}

func (p *Printer) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.view; v != nil && !v.closed && (v.dirty || v.drawn > 0) {
		p.redraw(true)
	}
}

// redraw draws the view in place of its last drawing, at most ten times a
// second unless force is set; a change not drawn is left to the ticker.
func (p *Printer) redraw(force bool) {
	v := p.view
	if v == nil || v.closed {
		return
	}
	now := p.now()
	if !force && now.Sub(v.lastDraw) < viewInterval {
		v.dirty = true
		return
	}
	columns, rows := p.size()
	lines := p.fit(p.rows(now), rows)
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r", v.drawn)
	}
	for _, r := range lines {
		b.WriteString(r.render(p, columns))
		b.WriteString("\x1b[K\n")
	}
	b.WriteString("\x1b[J")
	io.WriteString(p.stderr, b.String())
	v.drawn, v.lastDraw, v.dirty = len(lines), now, false
}

// collapse replaces the view by its summary for good: the build ended
// (ev is its finished event f; the result line is the last of
// view.results) or the printer is closed (both nil).
func (p *Printer) collapse(ev *kilnv1.BuildEvent, f *kilnv1.BuildFinished) {
	v := p.view
	now := p.now()
	header := "[+] Building"
	if p.first != nil {
		end := now
		if ev.GetTime() != nil {
			end = ev.GetTime().AsTime()
		}
		header += " " + seconds(end.Sub(p.first.AsTime()))
	}
	done, total := p.counts()
	if total > 0 {
		header += fmt.Sprintf(" (%d/%d)", done, total)
	}
	switch {
	case f == nil:
		header += " STOPPED"
	case f.GetState() == kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		header += " FINISHED"
	default:
		header += " " + strings.ToUpper(stateName(f.GetState()))
	}
	if !p.seen {
		header = "" // the build never started: its context lines say all
	}
	columns, _ := p.size()
	var b strings.Builder
	if header != "" {
		b.WriteString(header + "\n")
	}
	end := now
	if ev.GetTime() != nil {
		end = ev.GetTime().AsTime()
	}
	var failing *step
	if f.GetState() == kilnv1.BuildState_BUILD_STATE_FAILED {
		failing = p.failingStep()
	}
	for _, line := range v.farm {
		b.WriteString(sanitize(line) + "\n")
	}
	for _, s := range p.started {
		r := p.stepRow(s, end, s == failing)
		if r.state == "RUNNING" && f != nil {
			continue // another stage's step, cut short by the failure
		}
		b.WriteString(r.render(p, columns) + "\n")
	}
	for _, line := range v.results {
		b.WriteString(sanitize(line) + "\n")
	}
	v.clear(p.stderr)
	io.WriteString(p.stderr, b.String())
	v.closed = true
}

// counts returns the finished steps and the steps known in all.
func (p *Printer) counts() (done, total int) {
	for _, s := range p.started {
		if s.done {
			done++
		}
		total = max(total, int(s.total), int(s.n))
	}
	return done, total
}

// row is one line of the view: text on the left and, aligned to the right
// edge, a step's state and time.
type row struct {
	text  string
	state string
	time  string
	style string
	// keep marks rows the view keeps when it is cut to the terminal's
	// height: the header and the farm's lines.
	keep bool
}

// rows lays out the live view at now.
func (p *Printer) rows(now time.Time) []row {
	v := p.view
	var out []row
	switch {
	case p.first == nil && p.status != "":
		out = append(out, row{text: p.status, keep: true})
	case p.first != nil:
		header := "[+] Building " + seconds(max(now.Sub(p.first.AsTime()), 0))
		if done, total := p.counts(); total > 0 {
			header += fmt.Sprintf(" (%d/%d)", done, total)
		} else if p.status != "" {
			header += " " + strings.ToLower(strings.TrimPrefix(p.status, "[+] "))
		}
		out = append(out, row{text: header, keep: true})
	}
	for _, line := range v.farm {
		out = append(out, row{text: line, keep: true})
	}
	_, total := p.counts()
	for n := 1; n <= total; n++ {
		s := p.steps[uint32(n)]
		if s == nil || s.startedAt.IsZero() && !s.done {
			out = append(out, row{text: fmt.Sprintf(" => [%d/%d]", n, total), state: "QUEUED"})
			continue
		}
		out = append(out, p.stepRow(s, now, false))
		if !s.done {
			tail := s.lines[max(len(s.lines)-tailLines, 0):]
			for _, l := range tail {
				out = append(out, row{text: " => => # " + l, style: styleFaint})
			}
		}
	}
	for _, l := range v.engineTail {
		out = append(out, row{text: " => " + l, style: styleFaint})
	}
	for _, l := range v.results {
		out = append(out, row{text: l, keep: true})
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// stepRow is step s's row at now; failed marks the step the build failed
// in.
func (p *Printer) stepRow(s *step, now time.Time, failed bool) row {
	r := row{text: fmt.Sprintf(" => %s %s", s.label(), s.instruction)}
	switch {
	case s.done && s.cached:
		r.state, r.time, r.style = "CACHED", seconds(s.took), styleDone
	case s.done:
		r.state, r.time, r.style = "DONE", seconds(s.took), styleDone
	case failed:
		r.state, r.time, r.style = "ERROR", seconds(max(now.Sub(s.startedAt), 0)), styleError
	default:
		r.state, r.time = "RUNNING", seconds(max(now.Sub(s.startedAt), 0))
	}
	return r
}

// render cuts the row to columns-1 (so it never wraps) and paints it.
func (r row) render(p *Printer, columns int) string {
	text := sanitize(r.text)
	right := r.state
	if r.time != "" {
		right += " " + r.time
	}
	room := columns - 1
	if right == "" {
		return p.paint(r.style, truncate(text, room))
	}
	right = fmt.Sprintf("%12s", right)
	left := truncate(text, max(room-displayWidth(right)-1, 0))
	pad := max(room-displayWidth(left)-displayWidth(right), 1)
	return p.paint(r.style, left+strings.Repeat(" ", pad)+right)
}

// fit cuts rows to the terminal's height (less one, for the cursor's
// line): the steps' rows go first, oldest first, then the oldest farm
// lines; the header stays.
func (p *Printer) fit(rows []row, height int) []row {
	if height <= 0 {
		height = defaultRows
	}
	limit := max(height-1, 1)
	for len(rows) > limit {
		i := 1
		for i < len(rows) && rows[i].keep {
			i++
		}
		if i == len(rows) {
			i = 1 // only kept rows left: drop the oldest farm line
		}
		if i >= len(rows) {
			break
		}
		rows = append(rows[:i], rows[i+1:]...)
	}
	return rows
}

// size returns the terminal's columns and rows: asked of stderr when it
// is a terminal, else as WithTerminal gave them, else the
// defaults.
func (p *Printer) size() (columns, rows int) {
	columns, rows = p.width, p.height
	if f, ok := p.stderr.(*os.File); ok && p.terminal {
		if c, r, err := term.GetSize(int(f.Fd())); err == nil && c > 0 {
			columns, rows = c, r
		}
	}
	if columns <= 0 {
		columns = defaultColumns
	}
	return columns, rows
}

// sanitize makes a line safe to draw: escape sequences and control
// characters are dropped, tabs become spaces.
func sanitize(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b:
			i = skipEscape(s, i)
		case c == '\t':
			b.WriteByte(' ')
		case c < 0x20 || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// skipEscape returns the index of the last byte of the escape sequence
// starting at s[i] (ESC): a CSI sequence "ESC [ params final", an OSC
// sequence ended by BEL or ESC \, or ESC and one byte.
func skipEscape(s string, i int) int {
	if i+1 >= len(s) {
		return i
	}
	switch s[i+1] {
	case '[':
		for j := i + 2; j < len(s); j++ {
			if s[j] >= 0x40 && s[j] <= 0x7e {
				return j
			}
		}
		return len(s) - 1
	case ']':
		for j := i + 2; j < len(s); j++ {
			if s[j] == 0x07 {
				return j
			}
			if s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\' {
				return j + 1
			}
		}
		return len(s) - 1
	}
	return i + 1
}

// truncate cuts s to at most width columns, ending it with "…" when cut.
func truncate(s string, width int) string {
	if displayWidth(s) <= width {
		return s
	}
	if width <= 0 {
		return ""
	}
	var b strings.Builder
	w := 0
	for _, r := range s {
		rw := runeWidth(r)
		if w+rw > width-1 {
			break
		}
		b.WriteRune(r)
		w += rw
	}
	b.WriteString("…")
	return b.String()
}

func displayWidth(s string) int {
	w := 0
	for _, r := range s {
		w += runeWidth(r)
	}
	return w
}

// runeWidth is the columns a terminal gives r: two for the East Asian
// wide and full-width ranges and emoji, else one.
func runeWidth(r rune) int {
	switch {
	case r >= 0x1100 && r <= 0x115f, r >= 0x2e80 && r <= 0xa4cf, r >= 0xac00 && r <= 0xd7a3,
		r >= 0xf900 && r <= 0xfaff, r >= 0xfe30 && r <= 0xfe4f, r >= 0xff00 && r <= 0xff60,
		r >= 0xffe0 && r <= 0xffe6, r >= 0x1f300 && r <= 0x1f64f, r >= 0x1f900 && r <= 0x1f9ff,
		r >= 0x20000 && r <= 0x3fffd:
		return 2
	}
	return 1
}
