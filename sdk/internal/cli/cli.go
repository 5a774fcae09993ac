// Package cli implements the kiln command; sdk/cmd/kiln only wires it to
// the process.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// App is one run of the kiln command with its process surroundings, so
// tests can supply their own.
type App struct {
	// Stdin is what kiln build -f - reads the Dockerfile from (nil: empty).
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// LookupEnv reads the environment (KILN_GATEWAY, KILN_TOKEN,
	// KILN_PROGRESS, --build-arg KEY).
	LookupEnv func(string) (string, bool)
	// StderrIsTerminal makes --progress auto pick tty.
	StderrIsTerminal bool
	// TerminalWidth is stderr's width in columns, 0 if unknown.
	TerminalWidth int
	// Interrupts delivers SIGINT and SIGTERM; nil delivers nothing.
	Interrupts <-chan os.Signal
}

// Main runs the kiln command for the current process and returns its exit
// code.
func Main(args []string) int {
	interrupts := make(chan os.Signal, 2)
	signal.Notify(interrupts, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(interrupts)

	a := &App{
		Stdin:      os.Stdin,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		LookupEnv:  os.LookupEnv,
		Interrupts: interrupts,
	}
	if fd := int(os.Stderr.Fd()); term.IsTerminal(fd) {
		a.StderrIsTerminal = true
		if w, _, err := term.GetSize(fd); err == nil {
			a.TerminalWidth = w
		}
	}
	return a.Run(context.Background(), args)
}

// Run runs the kiln command with args (without the program name) and returns
// its exit code.
func (a *App) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		a.usage(a.Stderr)
		return ExitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "--version":
		fmt.Fprintln(a.Stdout, versionString())
		return ExitOK
	case "help", "-h", "--help":
		if len(rest) > 0 {
			if c, ok := lookupCommand(rest[0]); ok {
				return c.run(a, ctx, []string{"--help"})
			}
		}
		a.usage(a.Stdout)
		return ExitOK
	default:
		c, ok := lookupCommand(cmd)
		if !ok {
			fmt.Fprintf(a.Stderr, "ERROR: unknown command %q\n\n", cmd)
			a.usage(a.Stderr)
			return ExitUsage
		}
		return c.run(a, ctx, rest)
	}
}

// usageErrorf reports a command-line mistake and returns ExitUsage.
func (a *App) usageErrorf(cmd, format string, args ...any) int {
	fmt.Fprintf(a.Stderr, "ERROR: %s\nSee 'kiln %s --help'.\n", fmt.Sprintf(format, args...), cmd)
	return ExitUsage
}

// lookupEnv is LookupEnv, or an empty environment when it is nil.
func (a *App) lookupEnv() func(string) (string, bool) {
	if a.LookupEnv == nil {
		return func(string) (string, bool) { return "", false }
	}
	return a.LookupEnv
}
