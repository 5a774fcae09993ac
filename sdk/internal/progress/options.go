package progress

import "context"

// Option configures a Printer.
type Option func(*Printer)

// WithColor colours the output as buildx does (errors red, finished and
// cached steps blue, step output dim). Give it only when stderr is a
// terminal and NO_COLOR is unset (see ColorEnabled).
func WithColor(on bool) Option { return func(p *Printer) { p.color = on } }

// WithDebug shows the farm's internal lines (see Internal).
func WithDebug(on bool) Option { return func(p *Printer) { p.debug = on } }

// WithGitLabSections wraps each step of plain output in GitLab CI's
// collapsible sections (see GitLabCI).
func WithGitLabSections(on bool) Option { return func(p *Printer) { p.gitlab = on } }

// WithTerminal says whether stderr is a terminal and its size in columns
// and rows (0: unknown). The tty view fits what it draws to the size; a
// stderr that is an *os.File on a terminal is asked its size at every
// redraw instead, so the view follows a resized window.
func WithTerminal(isTerminal bool, columns, rows int) Option {
	return func(p *Printer) {
		p.terminal, p.width, p.height = isTerminal, columns, rows
	}
}

// WithContext bounds the tty view's redraw ticker by ctx as well as by
// Close.
func WithContext(ctx context.Context) Option { return func(p *Printer) { p.ctx = ctx } }

// ColorEnabled is the colour rule every kiln command applies: colours only
// when the output is a terminal and NO_COLOR (https://no-color.org) is
// unset or empty.
func ColorEnabled(isTerminal bool, lookupEnv func(string) (string, bool)) bool {
	if !isTerminal {
		return false
	}
	v, _ := lookupEnv("NO_COLOR")
	return v == ""
}

// GitLabCI says whether the command runs in a GitLab CI job (GITLAB_CI is
// "true"), where plain output is wrapped in collapsible sections.
func GitLabCI(lookupEnv func(string) (string, bool)) bool {
	v, _ := lookupEnv("GITLAB_CI")
	return v == "true"
}
