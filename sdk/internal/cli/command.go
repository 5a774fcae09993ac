package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
)

// command is one kiln subcommand: its names, its line in the top-level
// usage, how it runs, and its flags, which the completion scripts offer.
type command struct {
	name    string
	aliases []string
	summary string
	// subcommands are the words that may follow the name ("agents drain").
	subcommands []string
	// flags returns a new flag set of the command (nil: none).
	flags func() *pflag.FlagSet
	// run runs the command with the arguments after its name.
	run func(a *App, ctx context.Context, args []string) int
}

// commands lists kiln's subcommands in the order the usage shows them.
func commands() []command {
	return []command{
		{name: "build", summary: "Build an image from a Dockerfile on the farm",
			flags: func() *pflag.FlagSet { return newBuildFlagSet(&buildFlags{}) }, run: (*App).build},
		{name: "ls", aliases: []string{"builds"}, summary: "List your builds, newest first",
			flags: func() *pflag.FlagSet { return newListFlagSet(&listFlags{}) }, run: (*App).list},
		{name: "logs", summary: "Print a build's log; -f follows it to its end",
			flags: func() *pflag.FlagSet { return newLogsFlagSet(&logsFlags{}) }, run: (*App).logs},
		{name: "inspect", summary: "Show builds' records as JSON",
			flags: func() *pflag.FlagSet { return newInspectFlagSet(&connFlags{}) }, run: (*App).inspect},
		{name: "cancel", summary: "Cancel builds",
			flags: func() *pflag.FlagSet { return newCancelFlagSet(&connFlags{}) }, run: (*App).cancel},
		{name: "retry", summary: "Start a new build of a build's spec and context",
			flags: func() *pflag.FlagSet { return newRetryFlagSet(&retryFlags{}) }, run: (*App).retry},
		{name: "output", summary: outputUsage,
			flags: func() *pflag.FlagSet { return newOutputFlagSet(&outputFlags{}) }, run: (*App).output},
		{name: "agents", summary: "List the farm's build agents; drain or undrain one", subcommands: []string{"drain", "undrain"},
			flags: func() *pflag.FlagSet { return newAgentsFlagSet("agents", &connFlags{}, new(string)) }, run: (*App).agents},
		{name: "version", summary: "Show the kiln version and the farm's",
			flags: func() *pflag.FlagSet { return newVersionFlagSet(&versionFlags{}) }, run: (*App).version},
		{name: "completion", summary: "Print a shell completion script (bash, zsh or fish)", subcommands: completionShells,
			flags: func() *pflag.FlagSet { return newCompletionFlagSet() }, run: (*App).completion},
	}
}

// lookupCommand returns the command called name or one of its aliases.
func lookupCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
		for _, alias := range c.aliases {
			if alias == name {
				return c, true
			}
		}
	}
	return command{}, false
}

// usageExits are the exit statuses of every command, in the top-level usage.
var usageExits = []exitStatus{
	{ExitOK, "success; for build, retry and logs -f: the build succeeded"},
	{ExitFailed, "the build failed or was cancelled, a build was not found, or another error"},
	exitUsageStatus,
	exitUnreachableStatus,
	{ExitTimedOut, "the farm cancelled the build when it ran past its --timeout"},
	{ExitInterrupted, "interrupted: Ctrl-C cancelled the build, or a second Ctrl-C stopped following it (it goes on: 'kiln logs -f ID' re-attaches)"},
}

// usage writes the top-level usage to w.
func (a *App) usage(w io.Writer) {
	var cmds strings.Builder
	for _, c := range commands() {
		summary := c.summary
		if len(c.aliases) > 0 {
			summary += " (alias: " + strings.Join(c.aliases, ", ") + ")"
		}
		fmt.Fprintf(&cmds, "  %-11s %s\n", c.name, summary)
	}
	var exits strings.Builder
	writeExits(&exits, usageExits)
	fmt.Fprintf(w, `Usage:  kiln COMMAND [OPTIONS]

Build container images on a kiln build farm, and find, follow, cancel and
retry the builds you started.

Commands:
%s
Environment:
  KILN_GATEWAY   address of the kiln gateway (default %s), or
                 gateways to fail over between: a:7700,b:7700 or
                 dns:///name:7700 (every address of the name)
  KILN_TOKEN     bearer token for the gateway (or KILN_TOKEN_FILE)
  KILN_PROGRESS  default --progress mode
  KILN_CACHE_DIR where kiln keeps file digests between runs
                 (default: the user cache directory's kiln/)

Exit status:
%s
Run 'kiln COMMAND --help' for more information on a command.
`, cmds.String(), DefaultGateway, exits.String())
}
