package cli

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

func newCancelFlagSet(conn *connFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("cancel", pflag.ContinueOnError)
	fs.SortFlags = false
	conn.register(fs)
	return fs
}

var cancelHelp = helpText{
	usage: "kiln cancel [OPTIONS] BUILD...",
	about: `Cancel builds, from any terminal: a queued build ends at once, a running one
once its agent has stopped it. kiln prints each build's id once it has
ended CANCELLED (or had ended before, which it says on stderr).`,
	examples: `kiln cancel b06h4trcbne1xgcy6kxmx93yha4
# cancel every build of yours still queued
kiln cancel $(kiln ls --state queued --limit 0 --format '{{.ID}}')`,
	exits: []exitStatus{
		{ExitOK, "every build has ended"},
		{ExitFailed, "a build was not found (it does not exist or is another tenant's), or another error; the others are cancelled"},
		exitUsageStatus, exitUnreachableStatus,
	},
}

// cancel is `kiln cancel`.
func (a *App) cancel(ctx context.Context, args []string) int {
	var cf connFlags
	fs := newCancelFlagSet(&cf)
	if code, done := a.parseFlags("cancel", fs, cancelHelp, args); done {
		return code
	}
	if fs.NArg() == 0 {
		return a.usageErrorf("cancel", `"kiln cancel" needs at least one BUILD id ('kiln ls --state running' lists them)`)
	}
	client, conn, code := a.dial(ctx, "cancel", fs, &cf, "")
	if client == nil {
		return code
	}
	defer client.Close()
	code = ExitOK
	for _, id := range fs.Args() {
		if c := a.cancelOne(ctx, client, conn.gateway, id); c != ExitOK {
			if c == ExitUnreachable {
				return c
			}
			code = max(code, c)
		}
	}
	return code
}

// cancelOne cancels build id and waits until it has ended.
func (a *App) cancelOne(ctx context.Context, client *kiln.Client, gateway, id string) int {
	rec, err := client.Cancel(ctx, id)
	if err != nil {
		return reportFarmError(a.Stderr, gateway, id, err)
	}
	ended := terminal(rec.GetState())
	if !ended {
		// Its agent stops it: wait for the end of its events.
		b, err := client.Watch(ctx, id, 0)
		if err != nil {
			return reportFarmError(a.Stderr, gateway, id, err)
		}
		if rec, err = b.Wait(ctx); rec == nil {
			return reportFarmError(a.Stderr, gateway, id, err)
		}
	}
	switch {
	case rec.GetState() == kilnv1.BuildState_BUILD_STATE_CANCELLED && !rec.GetTimedOut():
	case ended:
		fmt.Fprintf(a.Stderr, "build %s had already ended: %s\n", id, buildStateText(rec))
	default:
		fmt.Fprintf(a.Stderr, "build %s ended %s before its agent stopped it\n", id, buildStateText(rec))
	}
	fmt.Fprintln(a.Stdout, id)
	return ExitOK
}
