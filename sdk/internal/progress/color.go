package progress

// The ANSI styles of coloured output, buildx's defaults: finished work
// blue, errors red, a step's output faint.
const (
	styleDone  = "\x1b[34m"
	styleError = "\x1b[31m"
	styleFaint = "\x1b[2m"
	styleReset = "\x1b[0m"
)

// paint wraps s in style when the printer colours its output.
func (p *Printer) paint(style, s string) string {
	if !p.color || s == "" {
		return s
	}
	return style + s + styleReset
}
