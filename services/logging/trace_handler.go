package logging

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// TraceHandler wraps a slog.Handler and adds trace_id and span_id to every
// record logged with a context that carries a valid span (the *Context
// variants: InfoContext, WarnContext, …), so a log line can be found from
// its trace and the other way round. Records logged without a context, or
// with one that carries no span, pass through unchanged.
//
// The ids are added as top-level attributes only while no group is open:
// after WithGroup they land inside the group, as any record attribute does.
type TraceHandler struct {
	next slog.Handler
}

var _ slog.Handler = TraceHandler{}

// NewTraceHandler returns next wrapped in a TraceHandler.
func NewTraceHandler(next slog.Handler) TraceHandler { return TraceHandler{next: next} }

// Enabled defers to the wrapped handler.
func (h TraceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle adds the span's ids, when ctx carries one, and passes r on.
func (h TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs wraps the wrapped handler's WithAttrs.
func (h TraceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return TraceHandler{next: h.next.WithAttrs(attrs)}
}

// WithGroup wraps the wrapped handler's WithGroup.
func (h TraceHandler) WithGroup(name string) slog.Handler {
	return TraceHandler{next: h.next.WithGroup(name)}
}
