package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// An attempt's spans, all in the build's trace (the record's trace
// context), each with the build id and attempt:
//
//	build attempt (cicd.worker.id = agent)
//	├── context fetch, context materialize
//	├── step 1: FROM …, step 2: RUN …   (kiln.step.number, kiln.step.cached)
//	└── push TAG                         (one per tag)
//
// The steps' spans come from the Reporter's StepStarted/StepFinished calls;
// BuildKit runs stages in parallel, so they are kept by step number.

var tracer = otel.Tracer("github.com/kilnbuild/kiln/agent")

// maxInstructionInName bounds the instruction quoted in a step span's name;
// the attribute kiln.step.instruction holds it whole.
const maxInstructionInName = 64

// buildAttrs are the attributes every span of an attempt carries.
func buildAttrs(b *kilnv1.Build) []attribute.KeyValue {
	return []attribute.KeyValue{
		telemetry.BuildID(b.GetId()), telemetry.AttemptKey.Int64(int64(b.GetAttempt())), telemetry.Component("agent"),
	}
}

// startAttempt starts the span of one attempt at an assigned build,
// parented on the build's trace (stored in its record), so attempts on
// different agents, and after restarts, land in one trace.
func startAttempt(ctx context.Context, b *kilnv1.Build, agent string) (context.Context, trace.Span) {
	ctx = telemetry.BuildContext(ctx, b)
	return tracer.Start(ctx, "build attempt", trace.WithAttributes(buildAttrs(b)...),
		trace.WithAttributes(telemetry.CICDWorkerIDKey.String(agent), telemetry.AgentKey.String(agent)))
}

// endAttempt records how the attempt's build ended on its span: its error,
// or why its context ended (cancelled, drained, lost).
func endAttempt(span trace.Span, result *kilnv1.BuildResult, buildErr, cause error) {
	if result != nil {
		span.SetAttributes(attribute.Int("kiln.build.steps", int(result.GetSteps())), attribute.Int("kiln.build.cached_steps", int(result.GetCachedSteps())))
	}
	switch {
	case buildErr != nil && cause != nil:
		span.SetStatus(codes.Error, cause.Error())
	case buildErr != nil:
		span.SetStatus(codes.Error, buildErr.Error())
	}
}

// startSpan starts a span of b's attempt under ctx.
func startSpan(ctx context.Context, name string, b *kilnv1.Build, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return tracer.Start(ctx, name, trace.WithAttributes(buildAttrs(b)...), trace.WithAttributes(attrs...))
}

// endSpan ends span, marking it failed if err is not nil.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// stepSpans keeps the spans of an attempt's Dockerfile steps by step
// number: BuildKit's steps may run, and end, in any order.
type stepSpans struct {
	ctx   context.Context
	attrs []attribute.KeyValue

	mu   sync.Mutex // guards open
	open map[int]trace.Span
}

func newStepSpans(ctx context.Context, b *kilnv1.Build) *stepSpans {
	return &stepSpans{ctx: ctx, attrs: buildAttrs(b), open: map[int]trace.Span{}}
}

// started opens step's span.
func (s *stepSpans) started(step int, instruction string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.open[step]; ok {
		return
	}
	s.open[step] = s.start(step, instruction, time.Now())
}

func (s *stepSpans) start(step int, instruction string, at time.Time) trace.Span {
	_, span := tracer.Start(s.ctx, stepSpanName(step, instruction), trace.WithTimestamp(at),
		trace.WithAttributes(s.attrs...),
		trace.WithAttributes(telemetry.StepNumberKey.Int(step), telemetry.StepInstrKey.String(instruction)))
	return span
}

// finished ends step's span (opening it first if StepStarted was not
// heard), with whether the engine took it from its cache.
func (s *stepSpans) finished(step int, instruction string, cached bool, took time.Duration) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	span, ok := s.open[step]
	if !ok {
		span = s.start(step, instruction, time.Now().Add(-took))
	}
	delete(s.open, step)
	span.SetAttributes(telemetry.StepCachedKey.Bool(cached))
	span.End()
}

// end ends the spans of steps that never finished (the build failed or
// was stopped), marked failed with err, or "did not finish".
func (s *stepSpans) end(err error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		err = errors.New("step did not finish")
	}
	for step, span := range s.open {
		span.SetAttributes(telemetry.StepCachedKey.Bool(false))
		span.SetStatus(codes.Error, err.Error())
		span.End()
		delete(s.open, step)
	}
}

// stepSpanName is "step N: INSTRUCTION", the instruction shortened.
func stepSpanName(step int, instruction string) string {
	if r := []rune(instruction); len(r) > maxInstructionInName {
		instruction = string(r[:maxInstructionInName-1]) + "…"
	}
	return fmt.Sprintf("step %d: %s", step, instruction)
}
