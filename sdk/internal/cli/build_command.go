package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"
)

// buildHelp is `kiln build --help` around the build flags.
var buildHelp = helpText{
	usage: "kiln build [OPTIONS] PATH",
	about: `Build an image from a Dockerfile on the kiln build farm. PATH is the build
context directory; .dockerignore in it is honoured.

kiln follows the build to its end and prints its log. Ctrl-C cancels the
build on the farm and waits for it to end; a second Ctrl-C stops waiting
and leaves the build to the farm ('kiln logs -f ID' re-attaches).
--detach prints the build's id once it is queued and exits.`,
	examples: `kiln build -t registry.example.com/app:1 --push .
# start the build and leave: the id goes to stdout
id=$(kiln build --detach -t registry.example.com/app:1 --push .)
kiln logs -f "$id"
# let the farm cancel the build if it runs longer than 20 minutes
kiln build --timeout 20m -t registry.example.com/app:1 --push .
# CI: a retried job re-attaches to the build its first try started
kiln build --idempotency-key "$CI_JOB_ID" -t "$IMAGE" --push .`,
	exits: []exitStatus{
		{ExitOK, "built (and pushed, with --push); with --detach: queued"},
		{ExitFailed, "the build failed or was cancelled (not by this command), or another error"},
		exitUsageStatus, exitUnreachableStatus,
		{ExitTimedOut, "the farm cancelled the build when it ran past --timeout"},
		{ExitInterrupted, "Ctrl-C cancelled the build, or a second Ctrl-C stopped following it"},
	},
}

// build is `kiln build`.
func (a *App) build(ctx context.Context, args []string) int {
	o, err := parseBuildArgs(args, a.lookupEnv())
	if errors.Is(err, pflag.ErrHelp) {
		buildHelp.write(a.Stdout, newBuildFlagSet(&buildFlags{}))
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
	if err := checkOutputOptions(o, a.stdoutIsTerminal()); err != nil {
		return a.usageErrorf("build", "%s", err.msg)
	}
	for _, w := range o.warnings {
		fmt.Fprintf(a.Stderr, "WARNING: %s\n", w)
	}
	return a.tracedBuild(ctx, o)
}
