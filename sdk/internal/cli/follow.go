package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// printEvents prints b's events with pr as they come. It returns true once
// the events have ended: after the build's finished event, or when
// following stopped (b.Wait says why). With untilQuiet it returns false
// as soon as no event came for quiet: the log so far of a build that is
// still running.
func printEvents(ctx context.Context, b *kiln.Build, pr *progress.Printer, untilQuiet bool, quiet time.Duration) bool {
	events := b.Events()
	var idle <-chan time.Time
	var timer *time.Timer
	if untilQuiet {
		timer = time.NewTimer(quiet)
		defer timer.Stop()
		idle = timer.C
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return true
			}
			pr.Event(ev.Proto())
			if timer != nil {
				timer.Reset(quiet)
			}
		case <-idle:
			return false
		case <-ctx.Done():
			return true
		}
	}
}

// buildEnded reports whether err, from Build.Wait, says how the build
// ended (it failed, was cancelled or timed out), which the printer has
// shown with the finished event, rather than why following it stopped.
func buildEnded(err error) bool {
	var failed *kiln.BuildFailedError
	return errors.As(err, &failed) || errors.Is(err, kiln.ErrCancelled) || errors.Is(err, kiln.ErrTimedOut)
}

// endCode is the exit code for how a build ended, from Build.Wait's error:
// ExitOK when it succeeded, ExitTimedOut when the farm cancelled it at its
// timeout, ExitFailed when it failed or was cancelled.
func endCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, kiln.ErrTimedOut):
		return ExitTimedOut
	case buildEnded(err):
		return ExitFailed
	}
	return ExitCode(err)
}

// terminal reports whether a build in state s has ended.
func terminal(s kilnv1.BuildState) bool {
	switch s {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED:
		return true
	}
	return false
}

// followStarted prints the events of b, a build this command started, to
// its end, with interrupts handled by w, and returns its final record (nil
// when following stopped first) and the command's exit code:
// ExitInterrupted when an interrupt cancelled the build or stopped the
// command, else endCode's. The second interrupt (the first asked the farm
// to cancel the build) leaves the build to the farm; the command then says
// how to re-attach.
func (a *App) followStarted(ctx context.Context, b *kiln.Build, pr *progress.Printer, w *buildInterrupts, gateway string) (*kilnv1.Build, int) {
	printEvents(ctx, b, pr, false, 0)
	final, err := b.Wait(ctx)
	switch {
	case w.stopped():
		pr.Close()
		fmt.Fprintf(a.Stderr, "kiln: stopped following build %s, which the farm goes on cancelling; re-attach with: kiln logs -f %s\n", b.ID(), b.ID())
		return nil, ExitInterrupted
	case errors.Is(err, kiln.ErrCancelled) && w.cancelled():
		return final, ExitInterrupted
	case err == nil || buildEnded(err):
		return final, endCode(err)
	}
	code := ExitCode(err)
	if code == ExitUnreachable {
		pr.Errorf("lost the connection to the kiln gateway at %s: %v", gateway, err)
	} else {
		pr.Errorf("%v", err)
	}
	return nil, code
}
