package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

func spanContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, err := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := trace.SpanIDFromHex("00f067aa0ba902b7")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

// decode reads the JSON lines a logger wrote.
func decode(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestTraceHandler(t *testing.T) {
	ctx, sc := spanContext(t)
	tests := []struct {
		name      string
		log       func(l *slog.Logger)
		wantTrace bool
		want      map[string]any // further attributes expected at the top level
	}{
		{"context with span", func(l *slog.Logger) { l.InfoContext(ctx, "build queued", "build_id", "b1") }, true, map[string]any{"build_id": "b1"}},
		{"no context", func(l *slog.Logger) { l.Info("build queued", "build_id", "b1") }, false, map[string]any{"build_id": "b1"}},
		{"context without span", func(l *slog.Logger) { l.WarnContext(context.Background(), "x") }, false, nil},
		{"invalid span context", func(l *slog.Logger) {
			l.ErrorContext(trace.ContextWithSpanContext(context.Background(), trace.SpanContext{}), "x")
		}, false, nil},
		{"logger With attrs", func(l *slog.Logger) { l.With("build_id", "b2").InfoContext(ctx, "running") }, true, map[string]any{"build_id": "b2"}},
		{"Log with level", func(l *slog.Logger) { l.Log(ctx, slog.LevelInfo, "x", "attempt", 2) }, true, map[string]any{"attempt": float64(2)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.log(slog.New(NewTraceHandler(slog.NewJSONHandler(&buf, nil))))
			lines := decode(t, &buf)
			if len(lines) != 1 {
				t.Fatalf("got %d lines, want 1: %s", len(lines), buf.String())
			}
			m := lines[0]
			if tc.wantTrace {
				if m["trace_id"] != sc.TraceID().String() || m["span_id"] != sc.SpanID().String() {
					t.Fatalf("line %v: want trace_id %s, span_id %s", m, sc.TraceID(), sc.SpanID())
				}
			} else if _, ok := m["trace_id"]; ok {
				t.Fatalf("line %v has a trace_id, want none", m)
			} else if _, ok := m["span_id"]; ok {
				t.Fatalf("line %v has a span_id, want none", m)
			}
			for k, v := range tc.want {
				if m[k] != v {
					t.Fatalf("line %v: %s = %v, want %v", m, k, m[k], v)
				}
			}
		})
	}
}

// TestTraceHandlerGroup: with a group open the ids are record attributes
// like any other, inside the group.
func TestTraceHandlerGroup(t *testing.T) {
	ctx, sc := spanContext(t)
	var buf bytes.Buffer
	slog.New(NewTraceHandler(slog.NewJSONHandler(&buf, nil))).WithGroup("g").InfoContext(ctx, "x")
	m := decode(t, &buf)[0]
	g, _ := m["g"].(map[string]any)
	if g["trace_id"] != sc.TraceID().String() {
		t.Fatalf("line %v: want trace_id inside group g", m)
	}
}

// TestTraceHandlerLevel: the wrapped handler's level still filters.
func TestTraceHandlerLevel(t *testing.T) {
	ctx, _ := spanContext(t)
	var buf bytes.Buffer
	l := slog.New(NewTraceHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	l.InfoContext(ctx, "dropped")
	l.WarnContext(ctx, "kept")
	if got := buf.String(); strings.Contains(got, "dropped") || !strings.Contains(got, "kept") {
		t.Fatalf("log = %q, want only the warning", got)
	}
}

// TestTraceHandlerKeepsRecord: adding the ids does not change the record
// another handler sees (the record is cloned first).
func TestTraceHandlerKeepsRecord(t *testing.T) {
	ctx, _ := spanContext(t)
	var buf bytes.Buffer
	h := NewTraceHandler(slog.NewJSONHandler(&buf, nil))
	rec := slog.NewRecord(time.Time{}, slog.LevelInfo, "x", 0)
	rec.AddAttrs(slog.String("a", "1"))
	if err := h.Handle(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if rec.NumAttrs() != 1 {
		t.Fatalf("the caller's record has %d attributes after Handle, want 1", rec.NumAttrs())
	}
}

// TestNewLogsTraceIDs: the logger New makes is wrapped, and --log-level
// applies.
func TestNewLogsTraceIDs(t *testing.T) {
	ctx, sc := spanContext(t)
	var buf bytes.Buffer
	l, err := New(&buf, "info")
	if err != nil {
		t.Fatal(err)
	}
	l.DebugContext(ctx, "hidden")
	l.InfoContext(ctx, "build finished", "build_id", "b3")
	lines := decode(t, &buf)
	if len(lines) != 1 || lines[0]["trace_id"] != sc.TraceID().String() || lines[0]["build_id"] != "b3" {
		t.Fatalf("lines %v: want one line with trace_id and build_id", lines)
	}
	if _, err := New(os.Stderr, "loud"); err == nil {
		t.Fatal("New accepted log level \"loud\"")
	}
}
