package cli

import (
	"context"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
)

// newPrinter returns the printer of a build's events for a command that
// shows them (build, retry, logs), in mode resolved for the terminal the
// command runs in, with the environment's colour (NO_COLOR) and GitLab CI
// rules; debug shows the farm's internal lines. One renderer for every
// command, so that `kiln logs` prints what `kiln build` printed. ctx bounds
// the tty view's redraws.
func (a *App) newPrinter(ctx context.Context, mode progress.Mode, debug bool) *progress.Printer {
	lookup := a.lookupEnv()
	return progress.New(mode.Resolve(a.StderrIsTerminal), a.Stdout, a.Stderr,
		progress.WithTerminal(a.StderrIsTerminal, a.TerminalWidth, 0),
		progress.WithColor(progress.ColorEnabled(a.StderrIsTerminal, lookup)),
		progress.WithGitLabSections(progress.GitLabCI(lookup)),
		progress.WithDebug(debug),
		progress.WithContext(ctx))
}
