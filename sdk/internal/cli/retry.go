package cli

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
)

// retryFlags holds the raw values of `kiln retry` flags.
type retryFlags struct {
	conn           connFlags
	detach         bool
	idempotencyKey string
	progress       string
	debug          bool
}

func newRetryFlagSet(f *retryFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("retry", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.BoolVarP(&f.detach, "detach", "d", false, "Print the new build's id once it is queued and exit, instead of following it")
	fs.StringVar(&f.idempotencyKey, "idempotency-key", "", "Key that makes a retried command return the build its first try started (default: a random key)")
	fs.StringVar(&f.progress, "progress", "", `Set type of progress output, as 'kiln build --progress'; env KILN_PROGRESS (default "auto")`)
	fs.BoolVar(&f.debug, "debug", false, "Show the farm's internal lines too, as 'kiln build --debug'")
	f.conn.register(fs)
	return fs
}

var retryHelp = helpText{
	usage: "kiln retry [OPTIONS] BUILD",
	about: `Start a new build with a build's spec — tags, build args, secrets and
registry credentials as they were sealed — and its build context, which
the farm still holds: no upload. BUILD must have ended. kiln prints the new build's id, then
follows it as 'kiln build' does (Ctrl-C cancels it, a second Ctrl-C stops
waiting), or with --detach exits once it is queued.`,
	examples: `kiln retry b06h4trcbne1xgcy6kxmx93yha4
# retry the latest failed build, in the background
kiln retry --detach "$(kiln ls --state failed --limit 1 --format '{{.ID}}')"`,
	exits: []exitStatus{
		{ExitOK, "the new build succeeded; with --detach: it is queued"},
		{ExitFailed, "the new build failed or was cancelled (not by this command), BUILD was not found, or another error"},
		{ExitUsage, "usage error, or a request the farm rejected (among them: BUILD has not ended yet, or the farm no longer holds its context)"},
		exitUnreachableStatus,
		{ExitTimedOut, "the farm cancelled the new build when it ran past its timeout"},
		{ExitInterrupted, "Ctrl-C cancelled the new build, or a second Ctrl-C stopped following it"},
	},
}

// retry is `kiln retry`.
func (a *App) retry(ctx context.Context, args []string) int {
	var f retryFlags
	fs := newRetryFlagSet(&f)
	if code, done := a.parseFlags("retry", fs, retryHelp, args); done {
		return code
	}
	if fs.NArg() != 1 {
		return a.usageErrorf("retry", `"kiln retry" takes exactly one BUILD id ('kiln ls' lists them), got %d`, fs.NArg())
	}
	mode, err := progressMode(fs, f.progress, false, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("retry", "%v", err)
	}
	key := f.idempotencyKey // "": the SDK makes one up, kept across its own retries
	id := fs.Arg(0)
	client, conn, code := a.dial(ctx, "retry", fs, &f.conn, id)
	if client == nil {
		return code
	}
	defer client.Close()
	if f.detach {
		rec, err := client.Retry(ctx, id, key)
		if err != nil {
			return reportFarmError(a.Stderr, conn.gateway, id, err)
		}
		fmt.Fprintln(a.Stdout, rec.GetId())
		return ExitOK
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr := a.newPrinter(ctx, mode, f.debug)
	defer pr.Close()
	w := &buildInterrupts{printer: pr, cancel: cancel, client: client}
	stop := w.start(ctx, a.Interrupts)
	defer stop()
	rec, err := client.Retry(ctx, id, key)
	if err != nil {
		if w.stopped() {
			pr.Errorf("interrupted before the build started")
			return ExitInterrupted
		}
		return reportFarmError(a.Stderr, conn.gateway, id, err)
	}
	w.started(rec.GetId())
	pr.Infof("build %s retries build %s", rec.GetId(), id)
	b, err := client.Watch(ctx, rec.GetId(), 0)
	if err != nil {
		if w.stopped() {
			pr.Errorf("interrupted: build %s goes on on the farm; re-attach with: kiln logs -f %s", rec.GetId(), rec.GetId())
			return ExitInterrupted
		}
		return reportFarmError(a.Stderr, conn.gateway, rec.GetId(), err)
	}
	_, code = a.followStarted(ctx, b, pr, w, conn.gateway)
	return code
}
