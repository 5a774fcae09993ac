package cli

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
)

// outputFlags holds the raw values of `kiln output` flags.
type outputFlags struct {
	conn     connFlags
	output   []string
	progress string
}

func newOutputFlagSet(f *outputFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("output", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringArrayVarP(&f.output, "output", "o", nil, `Where to write the output, as 'kiln build --output' takes it: "type=local,dest=DIR" (or DIR), "type=tar,dest=FILE|-" (or -), "type=oci,dest=FILE|-", "type=docker,dest=FILE|-"`)
	fs.StringVar(&f.progress, "progress", "", `Set type of progress output ("auto", "plain", "tty", "quiet"); env KILN_PROGRESS`)
	f.conn.register(fs)
	return fs
}

var outputHelp = helpText{
	usage: "kiln output [OPTIONS] BUILD",
	about: `Download the output of a build that succeeded with --output local, tar, oci
or docker again, while the farm keeps it. A run that was interrupted resumes:
files already in place with the right digest are not fetched again, and a
partly downloaded blob continues where it stopped. A local output may be
written as a tar and the other way round; oci and docker outputs only as
themselves.`,
	examples: `kiln output b06h4trcbne1xgcy6kxmx93yha4 --output type=local,dest=out
kiln output b06h4trcbne1xgcy6kxmx93yha4 -o - > rootfs.tar
kiln output b06h4trcbne1xgcy6kxmx93yha4 -o type=docker,dest=- | docker load`,
	exits: []exitStatus{
		{ExitOK, "the output is written"},
		{ExitFailed, "BUILD was not found, has no output, its output expired, or another error"},
		exitUsageStatus, exitUnreachableStatus,
	},
}

// output is `kiln output`.
func (a *App) output(ctx context.Context, args []string) int {
	var f outputFlags
	fs := newOutputFlagSet(&f)
	if code, done := a.parseFlags("output", fs, outputHelp, args); done {
		return code
	}
	if fs.NArg() != 1 {
		return a.usageErrorf("output", `"kiln output" takes exactly one BUILD id ('kiln ls' lists them), got %d`, fs.NArg())
	}
	if len(f.output) == 0 {
		return a.usageErrorf("output", "--output is required: say where to write the build's output (e.g. --output type=local,dest=out)")
	}
	plan, err := outputs.ParsePlan(f.output)
	if err != nil {
		return a.usageErrorf("output", "%v", err)
	}
	if plan.Push || plan.Output == nil || plan.Output.Type == outputs.TypeCacheOnly {
		return a.usageErrorf("output", "--output must name a local, tar, oci or docker output to write: the registry and cacheonly have nothing to download")
	}
	mode, err := progressMode(fs, f.progress, false, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("output", "%v", err)
	}
	if plan.Dest == outputs.Stdout {
		if a.stdoutIsTerminal() {
			return a.usageErrorf("output", "--output dest=-: refusing to write the output to a terminal; redirect standard output or give dest=FILE")
		}
		if mode == progress.JSON || mode == progress.RawJSON {
			return a.usageErrorf("output", "--output dest=- writes to standard output, which --progress %s uses too", mode)
		}
	}
	id := fs.Arg(0)
	client, conn, code := a.dial(ctx, "output", fs, &f.conn, id)
	if client == nil {
		return code
	}
	defer client.Close()
	b, err := client.Get(ctx, id)
	if err != nil {
		return reportFarmError(a.Stderr, conn.gateway, id, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr := a.newPrinter(ctx, mode, false)
	defer pr.Close()
	// Ctrl-C stops the download; running the command again resumes it.
	interrupts := stopOnInterrupt(a.Interrupts, cancel)
	err = a.downloadOutput(ctx, client, b, plan, pr)
	interrupts.stop()
	switch {
	case interrupts.interrupted():
		pr.Errorf("interrupted: run the same command again to resume")
		return ExitInterrupted
	case err != nil:
		pr.Errorf("%v", err)
		return ExitCode(err)
	}
	return ExitOK
}

// outputUsage is `kiln output`'s line in the top-level usage.
const outputUsage = "Download a finished build's --output again (resumes)"
