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
	// TTY keeps a live view of the build on stderr, redrawn in place: the
	// farm's own lines, one line per step with its state and time and the
	// last output lines of the running ones; it collapses to a summary
	// when the build ends.
	TTY Mode = "tty"
	// JSON writes each event as one protojson line to stdout.
	JSON Mode = "json"
	// RawJSON writes BuildKit's SolveStatus JSON to stdout, one object a
	// line, as `buildctl --progress rawjson` does, for tools that read it.
	RawJSON Mode = "rawjson"
	// Quiet writes only errors to stderr and the image id to stdout.
	Quiet Mode = "quiet"
)

// Modes lists the values ParseMode accepts.
var Modes = []Mode{Auto, Plain, TTY, JSON, RawJSON, Quiet}

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("invalid progress mode %q: use one of %s", s, ModeNames())
}

// ModeNames lists the modes for help and error texts: "auto, plain, …".
func ModeNames() string {
	names := make([]string, len(Modes))
	for i, m := range Modes {
		names[i] = string(m)
	}
	return strings.Join(names, ", ")
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
