// Package logging sets up kiln's slog logger: JSON on stderr, or text when
// stderr is a terminal, at the level given by --log-level, with trace_id and
// span_id on every line logged with a context that carries a span (see
// TraceHandler). Lines about a build carry build_id: callers add it.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// New returns a logger writing to w at level ("debug", "info", "warn",
// "error"), as JSON unless w is a terminal, with trace ids (TraceHandler).
func New(w io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(NewTraceHandler(slog.NewTextHandler(w, opts))), nil
	}
	return slog.New(NewTraceHandler(slog.NewJSONHandler(w, opts))), nil
}
