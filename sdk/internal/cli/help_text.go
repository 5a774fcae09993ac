package cli

import (
	"errors"
	"fmt"
	"io"
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
	// exits says what each exit code means.
	exits string
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
	if h.exits != "" {
		fmt.Fprintf(w, "\nExit status:\n%s\n", strings.TrimRight(h.exits, "\n"))
	}
}

// Exit status lines the commands' help texts are made of.
const (
	exitsFarm = `  2  usage error, or a request the farm rejected (bad input, no or a
     revoked token, not allowed)
  3  the gateway could not be reached`
	exitsNotFound = `  1  a build was not found (it does not exist or is another tenant's),
     or another error`
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
