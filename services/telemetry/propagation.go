package telemetry

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// InjectMap returns ctx's trace context (traceparent, tracestate, baggage)
// as a map, the form a build record keeps it in (Build.trace_context); nil
// when ctx carries none.
func InjectMap(ctx context.Context) map[string]string {
	m := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, m)
	if len(m) == 0 {
		return nil
	}
	return m
}

// ExtractMap returns ctx with the trace context held in m as its remote
// parent.
func ExtractMap(ctx context.Context, m map[string]string) context.Context {
	if len(m) == 0 {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(m))
}

// BuildContext returns ctx with the build's trace (the gateway's
// StartBuild span, stored in the record) as its parent, so work on the
// build joins the build's trace whichever process does it, and whenever.
func BuildContext(ctx context.Context, b *kilnv1.Build) context.Context {
	return ExtractMap(ctx, b.GetTraceContext())
}

// InjectNATS writes ctx's trace context into a NATS message's headers.
func InjectNATS(ctx context.Context, h nats.Header) {
	if h == nil {
		return
	}
	otel.GetTextMapPropagator().Inject(ctx, bus.HeaderCarrier(h))
}

// ExtractNATS returns ctx with the trace context in a NATS message's
// headers as its remote parent.
func ExtractNATS(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, bus.HeaderCarrier(h))
}
