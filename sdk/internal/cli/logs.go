package cli

import (
	"context"
	"errors"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// logsFlags holds the raw values of `kiln logs` flags.
type logsFlags struct {
	conn          connFlags
	follow        bool
	sinceSequence uint64
	progress      string
	debug         bool
}

func newLogsFlagSet(f *logsFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("logs", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.BoolVarP(&f.follow, "follow", "f", false, "Follow a running build's log to its end")
	fs.Uint64Var(&f.sinceSequence, "since-sequence", 0, "Start at this event of the build's log (1: the first; each event of --progress json carries its sequence)")
	fs.StringVar(&f.progress, "progress", "plain", `How to print the log, as 'kiln build --progress' does: "plain", "tty", "json" (one event per line on stdout), …; not "quiet"`)
	fs.BoolVar(&f.debug, "debug", false, "Show the farm's internal lines too, as 'kiln build --debug'")
	f.conn.register(fs)
	return fs
}

var logsHelp = helpText{
	usage: "kiln logs [OPTIONS] BUILD",
	about: `Print a build's log, replayed from the farm from its first event: the same
lines 'kiln build' printed. With -f, follow a running build to its end;
without, print what the log holds and return. Ctrl-C stops following and
leaves the build running ('kiln cancel BUILD' cancels it).`,
	examples: `kiln logs b06h4trcbne1xgcy6kxmx93yha4
kiln logs -f "$(kiln build --detach -t registry.example.com/app:1 --push .)"
# resume where a lost connection left off
kiln logs -f --since-sequence 120 b06h4trcbne1xgcy6kxmx93yha4`,
	exits: []exitStatus{
		{ExitOK, "printed; with -f: the build succeeded"},
		{ExitFailed, "the build failed or was cancelled (with -f, or when it had ended before), the build was not found, or another error"},
		exitUsageStatus, exitUnreachableStatus,
		{ExitTimedOut, "the farm cancelled the build when it ran past its --timeout"},
		{ExitInterrupted, "Ctrl-C stopped following (the build goes on)"},
	},
}

// logs is `kiln logs`.
func (a *App) logs(ctx context.Context, args []string) int {
	var f logsFlags
	fs := newLogsFlagSet(&f)
	if code, done := a.parseFlags("logs", fs, logsHelp, args); done {
		return code
	}
	if fs.NArg() != 1 {
		return a.usageErrorf("logs", `"kiln logs" takes exactly one BUILD id ('kiln ls' lists them), got %d`, fs.NArg())
	}
	mode, err := progress.ParseMode(f.progress)
	if err == nil && mode == progress.Quiet {
		err = errors.New(`--progress quiet prints no log: "kiln logs" takes any other mode`)
	}
	if err != nil {
		return a.usageErrorf("logs", "%v", err)
	}
	id := fs.Arg(0)
	client, conn, code := a.dial(ctx, "logs", fs, &f.conn, id)
	if client == nil {
		return code
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr := a.newPrinter(ctx, mode, f.debug)
	defer pr.Close()
	interrupts := stopOnInterrupt(a.Interrupts, cancel)
	defer interrupts.stop()
	var opts []kiln.WatchOption
	if !f.follow {
		opts = append(opts, kiln.SoFar()) // a running build: its log so far
	}
	b, err := client.Watch(ctx, id, f.sinceSequence, opts...)
	if err != nil {
		if interrupts.interrupted() {
			return ExitInterrupted
		}
		return reportFarmError(a.Stderr, conn.gateway, id, err)
	}
	printEvents(ctx, b, pr)
	rec, err := b.Wait(ctx)
	if err == nil && !terminal(rec.GetState()) {
		return ExitOK // without -f, a running build's log so far
	}
	switch {
	case interrupts.interrupted():
		return ExitInterrupted
	case err == nil || buildEnded(err):
		return endCode(err)
	}
	pr.Close()
	return reportFarmError(a.Stderr, conn.gateway, id, err)
}
