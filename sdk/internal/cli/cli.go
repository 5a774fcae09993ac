// Package cli implements the kiln command; sdk/cmd/kiln only wires it to
// the process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// Version is the kiln version, set at link time with
// -ldflags "-X github.com/kilnbuild/kiln/sdk/internal/cli.Version=v1.2.3".
var Version = ""

// App is one run of the kiln command with its process surroundings, so
// tests can supply their own.
type App struct {
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
	case "build":
		return a.build(ctx, rest)
	case "agents":
		return a.agents(ctx, rest)
	case "version", "--version":
		if len(rest) > 0 {
			return a.usageErrorf("version", `"kiln version" accepts no arguments`)
		}
		fmt.Fprintln(a.Stdout, versionString())
		return ExitOK
	case "help", "-h", "--help":
		if len(rest) == 1 && rest[0] == "build" {
			a.buildUsage(a.Stdout)
			return ExitOK
		}
		a.usage(a.Stdout)
		return ExitOK
	default:
		fmt.Fprintf(a.Stderr, "ERROR: unknown command %q\n\n", cmd)
		a.usage(a.Stderr)
		return ExitUsage
	}
}

func (a *App) usage(w io.Writer) {
	fmt.Fprint(w, `Usage:  kiln COMMAND [OPTIONS]

Build container images on a kiln build farm.

Commands:
  build     Build an image from a Dockerfile on the farm
  agents    List the farm's build agents; drain or undrain one
  version   Show the kiln version

Environment:
  KILN_GATEWAY   address of the kiln gateway (default `+DefaultGateway+`), or
                 gateways to fail over between: a:7700,b:7700 or
                 dns:///name:7700 (every address of the name)
  KILN_TOKEN     bearer token for the gateway
  KILN_PROGRESS  default --progress mode
  KILN_CACHE_DIR where kiln keeps file digests between runs
                 (default: the user cache directory's kiln/)

Run 'kiln COMMAND --help' for more information on a command.
`)
}

func (a *App) buildUsage(w io.Writer) {
	fs := newBuildFlagSet(&buildFlags{})
	fmt.Fprintf(w, `Usage:  kiln build [OPTIONS] PATH

Build an image from a Dockerfile on the kiln build farm. PATH is the build
context directory; .dockerignore in it is honoured.

Options:
%s
Exit status: 0 built (and pushed), 1 the build failed or was cancelled,
2 usage error or request rejected by the farm, 3 gateway unreachable.
`, fs.FlagUsages())
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

func (a *App) build(ctx context.Context, args []string) int {
	o, err := parseBuildArgs(args, a.lookupEnv())
	if errors.Is(err, pflag.ErrHelp) {
		a.buildUsage(a.Stdout)
		return ExitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return a.usageErrorf("build", "%s", ue.msg)
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "ERROR: %v\n", err)
		return ExitCode(err)
	}
	for _, w := range o.warnings {
		fmt.Fprintf(a.Stderr, "WARNING: %s\n", w)
	}
	return a.tracedBuild(ctx, o)
}

func versionString() string {
	v := Version
	if v == "" {
		v = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return fmt.Sprintf("kiln version %s (%s, %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
