package cli

import (
	"context"
	"errors"
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// printEvents prints b's events with pr as they come, until they end:
// after the build's finished event, at the end of the log so far
// (kiln.SoFar), or when following stopped (b.Wait says why). A
// multi-platform build's children's events are printed with its own
// (printFamily).
func printEvents(ctx context.Context, b *kiln.Build, pr *progress.Printer) {
	if isMultiPlatform(b.Record()) {
		printFamily(ctx, b, pr) // its children's events too
		return
	}
	events := b.Events()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			pr.Event(ev.Proto())
		case <-ctx.Done():
			return
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
	printEvents(ctx, b, pr)
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
