package scheduler

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/telemetry"
)

var tracer = otel.Tracer("github.com/kilnbuild/kiln/scheduler")

// traceAssignment records one assignment (one attempt) of b in the build's
// trace: a "queue wait" span from when the build was queued for this attempt
// until now, and under it a "route" span for the assignment itself, from
// started (when the dispatcher took the router's decision up) until now,
// with the chosen agent, its cache score and whether the build spilled.
// Spans use wall-clock time, not the scheduler's injected clock.
func traceAssignment(b *kilnv1.Build, a routing.Assignment, started time.Time) {
	ctx := telemetry.BuildContext(context.Background(), b)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return // built before tracing, or by a client that sent none
	}
	end := time.Now()
	queued := b.GetQueuedAt()
	if queued == nil {
		queued = b.GetCreatedAt()
	}
	waitStart := queued.AsTime()
	if waitStart.After(started) { // another host's clock
		waitStart = started
	}
	build := []attribute.KeyValue{
		telemetry.BuildID(b.Id), telemetry.AttemptKey.Int64(int64(b.Attempt)),
		telemetry.TenantKey.String(b.Tenant), telemetry.Component("scheduler"),
	}
	ctx, wait := tracer.Start(ctx, "queue wait", trace.WithTimestamp(waitStart), trace.WithAttributes(build...))
	_, route := tracer.Start(ctx, "route", trace.WithTimestamp(started), trace.WithAttributes(build...))
	route.SetAttributes(
		telemetry.AgentKey.String(a.Agent),
		telemetry.RouteScoreKey.Int(a.Score),
		telemetry.RouteBestKey.Int(a.BestScore),
		telemetry.RouteSpilledKey.Bool(a.Reason == routing.Spilled),
		telemetry.RouteReasonKey.String(a.Reason.String()),
		attribute.String("kiln.route.explanation", a.Explanation),
	)
	route.End(trace.WithTimestamp(end))
	wait.End(trace.WithTimestamp(end))
}
