package gateway

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/kilnbuild/kiln/services/telemetry"
)

// tracer makes the gateway's own spans; otelgrpc makes one per RPC.
var tracer = otel.Tracer("github.com/kilnbuild/kiln/gateway")

// startBuildSpan starts the StartBuild span under the RPC's. Its context
// becomes the build's trace context (Build.trace_context): every later
// span about the build, in any process and at any attempt, descends from it.
func startBuildSpan(ctx context.Context) (context.Context, trace.Span) {
	return tracer.Start(ctx, "StartBuild", trace.WithAttributes(telemetry.Component("gateway")))
}
