package progress

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// screen is the little of a VT100 terminal that the tty view uses: it
// prints runes, moves the cursor up (CSI n A), to the line's start (CR)
// and down (LF), and erases to the end of the line (CSI K) or screen
// (CSI J); colours (CSI … m) are ignored. Its scrollback is unbounded, so
// the screen is every line ever written, as they stand at the end. Lines
// wider than the screen wrap, as on a terminal, and are counted.
type screen struct {
	t       testing.TB
	columns int
	lines   [][]rune
	row     int
	col     int
	// wraps counts the lines that were wider than the screen.
	wraps int
}

func newScreen(t testing.TB, columns int) *screen {
	return &screen{t: t, columns: columns, lines: [][]rune{nil}}
}

func (s *screen) write(out string) {
	for i := 0; i < len(out); i++ {
		switch c := out[i]; c {
		case '\r':
			s.col = 0
		case '\n':
			s.row++
			s.col = 0
			for len(s.lines) <= s.row {
				s.lines = append(s.lines, nil)
			}
		case 0x1b:
			i = s.escape(out, i)
		default:
			r, size := rune(c), 1
			if c >= 0x80 {
				rs := []rune(out[i:min(i+4, len(out))])
				r, size = rs[0], len(string(rs[0]))
			}
			i += size - 1
			s.put(r)
		}
	}
}

func (s *screen) put(r rune) {
	if s.col >= s.columns {
		// The terminal wraps the line: a view that did so would lose
		// count of its rows.
		s.wraps++
		s.row++
		s.col = 0
		for len(s.lines) <= s.row {
			s.lines = append(s.lines, nil)
		}
	}
	line := s.lines[s.row]
	for len(line) <= s.col {
		line = append(line, ' ')
	}
	line[s.col] = r
	s.lines[s.row] = line
	s.col++
}

// escape interprets the CSI sequence at out[i] and returns the index of
// its last byte.
func (s *screen) escape(out string, i int) int {
	if i+1 >= len(out) || out[i+1] != '[' {
		s.t.Errorf("unexpected escape sequence at %q", out[i:min(i+8, len(out))])
		return i
	}
	j := i + 2
	for j < len(out) && (out[j] < 0x40 || out[j] > 0x7e) {
		j++
	}
	if j == len(out) {
		s.t.Errorf("unterminated escape sequence %q", out[i:])
		return j - 1
	}
	param := out[i+2 : j]
	switch out[j] {
	case 'A':
		n, err := strconv.Atoi(param)
		if err != nil || n <= 0 || n > s.row {
			s.t.Errorf("cursor up %q from row %d", param, s.row)
		}
		s.row = max(s.row-n, 0)
	case 'K':
		if s.col < len(s.lines[s.row]) {
			s.lines[s.row] = s.lines[s.row][:s.col]
		}
	case 'J':
		if s.col < len(s.lines[s.row]) {
			s.lines[s.row] = s.lines[s.row][:s.col]
		}
		s.lines = s.lines[:s.row+1]
	case 'm':
	default:
		s.t.Errorf("unexpected escape sequence %q", out[i:j+1])
	}
	return j
}

// text is the screen's lines, trailing spaces and empty last lines
// removed.
func (s *screen) text() string {
	var lines []string
	for _, l := range s.lines {
		lines = append(lines, strings.TrimRight(string(l), " "))
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}

// withClock makes the printer read now for its clock.
func withClock(now func() time.Time) Option {
	return func(p *Printer) { p.now = now }
}

// clock is a test's clock, moved by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestScreen(t *testing.T) {
	s := newScreen(t, 20)
	s.write("one\ntwo\x1b[31m!\x1b[0m\nthree\n\x1b[2A\rTWO\x1b[K\n\x1b[J")
	if got, want := s.text(), "one\nTWO"; got != want {
		t.Fatalf("screen %q, want %q", got, want)
	}
}
