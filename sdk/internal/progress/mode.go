package progress

import (
	"fmt"
	"strings"
)

// Mode is how build progress is shown, as buildx's --progress.
type Mode string

// The progress modes.
const (
	// Auto is TTY when stderr is a terminal, else Plain.
	Auto Mode = "auto"
	// Plain writes one line per event to stderr.
	Plain Mode = "plain"
	// TTY writes what Plain writes plus a status line kept at the bottom.
	TTY Mode = "tty"
	// JSON writes each event as one protojson line to stdout.
	JSON Mode = "json"
	// Quiet writes only errors to stderr and the image id to stdout.
	Quiet Mode = "quiet"
)

// Modes lists the values ParseMode accepts.
var Modes = []Mode{Auto, Plain, TTY, JSON, Quiet}

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	names := make([]string, len(Modes))
	for i, m := range Modes {
		names[i] = string(m)
	}
	return "", fmt.Errorf("invalid progress mode %q: use one of %s", s, strings.Join(names, ", "))
}

// Resolve turns Auto into TTY or Plain depending on whether stderr is a
// terminal; other modes are returned as they are.
func (m Mode) Resolve(stderrIsTerminal bool) Mode {
	if m != Auto {
		return m
	}
	if stderrIsTerminal {
		return TTY
	}
	return Plain
}
