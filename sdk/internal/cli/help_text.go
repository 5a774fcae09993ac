package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// helpText is a command's --help: its synopsis, what it does, examples and
// exit status, around the flag set's own usage lines.
type helpText struct {
	// usage is the synopsis without "Usage:", e.g. "kiln ls [OPTIONS]";
	// several lines for several forms.
	usage string
	about string
	// examples are command lines, each with an optional "# comment" line
	// before it.
	examples string
	// exits says what each exit code means, in code order.
	exits []exitStatus
}

// exitStatus is one line of a help's exit status: a code and what it
// means for the command.
type exitStatus struct {
	code int
	what string
}

// write prints the help with fs's flags to w.
func (h helpText) write(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage:  %s\n\n%s\n", h.usage, strings.TrimSpace(h.about))
	if fs != nil && fs.HasFlags() {
		fmt.Fprintf(w, "\nOptions:\n%s", fs.FlagUsages())
	}
	if h.examples != "" {
		fmt.Fprintf(w, "\nExamples:\n")
		for line := range strings.SplitSeq(strings.TrimSpace(h.examples), "\n") {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(line))
		}
	}
	if len(h.exits) > 0 {
		fmt.Fprintf(w, "\nExit status:\n")
		writeExits(w, h.exits)
	}
}

// writeExits writes exit statuses as an aligned list, each meaning wrapped
// to fit 78 columns.
func writeExits(w io.Writer, exits []exitStatus) {
	width := 0
	for _, e := range exits {
		width = max(width, len(strconv.Itoa(e.code)))
	}
	indent := strings.Repeat(" ", 2+width+2)
	for _, e := range exits {
		line := fmt.Sprintf("  %-*d  ", width, e.code)
		col := len(line)
		for i, word := range strings.Fields(e.what) {
			if i > 0 && col+1+len(word) > 78 {
				line += "\n" + indent
				col = len(indent)
			} else if i > 0 {
				line += " "
				col++
			}
			line += word
			col += len(word)
		}
		fmt.Fprintln(w, line)
	}
}

// Exit statuses the commands share.
var (
	exitUsageStatus       = exitStatus{ExitUsage, "usage error, or a request the farm rejected (bad input, no or a revoked token, not allowed)"}
	exitUnreachableStatus = exitStatus{ExitUnreachable, "the gateway could not be reached"}
	exitNotFoundStatus    = exitStatus{ExitFailed, "a build was not found (it does not exist or is another tenant's), or another error"}
)

// parseFlags parses args into fs for the command cmd. It returns done when
// the command should end at once with code: after printing help for
// --help (ExitOK), or a usage error for a bad flag (ExitUsage).
func (a *App) parseFlags(cmd string, fs *pflag.FlagSet, h helpText, args []string) (code int, done bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, pflag.ErrHelp):
		h.write(a.Stdout, fs)
		return ExitOK, true
	}
	return a.usageErrorf(cmd, "%v", err), true
}
