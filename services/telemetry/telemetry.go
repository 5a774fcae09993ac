// Package telemetry sets up OpenTelemetry tracing for kiln's services and
// holds the helpers that carry a build's trace across gRPC and NATS.
//
// Propagation (W3C TraceContext and Baggage) is always on, so a caller's
// trace context is passed on even by a process that records nothing. Spans
// are recorded and exported only when OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise the global tracer
// provider stays OpenTelemetry's no-op one and tracing costs next to
// nothing.
//
// A build's trace is stored with its record (Build.trace_context, the
// gateway's StartBuild span), so the scheduler's and agents' spans join it
// whenever they handle the build: after a restart, a redelivery or a
// lease expiry just as on the first attempt.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Setup installs the W3C TraceContext and Baggage propagator and, when an
// OTLP endpoint is configured in the environment, a tracer provider that
// batches spans to it, with service.name serviceName (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override). The protocol is
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: grpc
// (the default) or http/protobuf. shutdown flushes the spans still
// buffered; call it before the process exits.
func Setup(ctx context.Context, serviceName string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp), // OTEL_BSP_* tune it
		sdktrace.WithResource(res),
	)
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Enabled reports whether the environment asks for spans to be exported:
// an OTLP endpoint is set and OTEL_SDK_DISABLED is not true.
func Enabled() bool {
	return enabled(os.LookupEnv)
}

func enabled(lookup func(string) (string, bool)) bool {
	if v, _ := lookup("OTEL_SDK_DISABLED"); strings.EqualFold(strings.TrimSpace(v), "true") {
		return false
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v, _ := lookup(k); strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}

// protocol is the OTLP protocol the environment asks for.
func protocol(lookup func(string) (string, bool)) string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v, _ := lookup(k); strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
	}
	return "grpc"
}

// newExporter makes the OTLP span exporter; the exporters read the
// endpoint, headers, TLS and timeout settings from OTEL_EXPORTER_OTLP_*.
func newExporter(ctx context.Context) (*otlptrace.Exporter, error) {
	switch p := protocol(os.LookupEnv); p {
	case "grpc":
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP gRPC trace exporter: %w", err)
		}
		return exp, nil
	case "http/protobuf":
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP HTTP trace exporter: %w", err)
		}
		return exp, nil
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q is not supported: use grpc or http/protobuf", p)
	}
}
