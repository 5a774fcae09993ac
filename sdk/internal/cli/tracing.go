package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
)

// The CLI starts a build's trace: a "kiln build" span, under the CI job's
// span when TRACEPARENT (and TRACESTATE) are in the environment, sent to
// the gateway with every RPC. Spans are exported over OTLP only when
// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
// set; the trace context is passed on either way, so the farm's spans join
// the CI job's trace even when the CLI records nothing.
//
// This mirrors services/telemetry, which the SDK does not import: the SDK
// module depends on proto, gRPC and OpenTelemetry only.

// flushTimeout bounds the export of the CLI's spans before it exits.
const flushTimeout = 5 * time.Second

// exportDelay is how long the CLI holds an ended span before exporting it
// (unless OTEL_BSP_SCHEDULE_DELAY says otherwise): short, so the spans of
// the upload go out while the farm builds, and the connection to the
// collector is up by the time the CLI flushes the rest before it exits.
const exportDelay = 50 * time.Millisecond

// cliTrace is one kiln build's tracing: its root span and where it goes.
type cliTrace struct {
	tp   trace.TracerProvider
	sdk  *sdktrace.TracerProvider // nil when spans are not exported
	prop propagation.TextMapPropagator
	span trace.Span
	err  error // why the exporter could not be set up
}

// tracedBuild runs a build inside its "kiln build" span and flushes the
// spans before returning the exit code.
func (a *App) tracedBuild(ctx context.Context, o *buildOptions) int {
	lookup := a.lookupEnv()
	t := newCLITrace(ctx, lookup)
	ctx = t.start(ctx, lookup, o)
	o.trace = t
	code := a.runBuild(ctx, o)
	t.end(code)
	if err := t.flush(); err != nil && t.sdk != nil {
		fmt.Fprintf(a.Stderr, "WARNING: exporting the build's trace: %v\n", err)
	}
	return code
}

// newCLITrace sets up the CLI's tracer provider: an OTLP-exporting one when
// the environment names an endpoint, else a no-op one.
func newCLITrace(ctx context.Context, lookup func(string) (string, bool)) *cliTrace {
	t := &cliTrace{
		tp:   noop.NewTracerProvider(),
		prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	if !exportEnabled(lookup) {
		return t
	}
	exp, err := newExporter(ctx, lookup)
	if err != nil {
		t.err = err
		return t
	}
	res, _ := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "kiln")),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	var batch []sdktrace.BatchSpanProcessorOption
	if _, set := lookup("OTEL_BSP_SCHEDULE_DELAY"); !set {
		batch = append(batch, sdktrace.WithBatchTimeout(exportDelay))
	}
	t.sdk = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, batch...), sdktrace.WithResource(res))
	t.tp = t.sdk
	return t
}

// start continues TRACEPARENT/TRACESTATE from the environment and starts
// the "kiln build" span with the CI job's attributes.
func (t *cliTrace) start(ctx context.Context, lookup func(string) (string, bool), o *buildOptions) context.Context {
	carrier := propagation.MapCarrier{}
	for env, key := range map[string]string{"TRACEPARENT": "traceparent", "TRACESTATE": "tracestate", "BAGGAGE": "baggage"} {
		if v, ok := lookup(env); ok && v != "" {
			carrier[key] = v
		}
	}
	if len(carrier) > 0 {
		ctx = t.prop.Extract(ctx, carrier)
	}
	attrs := append(ciAttributes(lookup), attribute.String("cicd.system.component", "cli"))
	if tags := o.spec.GetTags(); len(tags) > 0 {
		attrs = append(attrs, attribute.StringSlice("kiln.tags", tags))
	}
	ctx, t.span = t.tp.Tracer("github.com/kilnbuild/kiln/sdk/internal/cli").Start(ctx, "kiln build",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// buildStarted records the build's id on the span.
func (t *cliTrace) buildStarted(id string) {
	if t != nil {
		t.span.SetAttributes(attribute.String("kiln.build.id", id))
	}
}

// end records the command's outcome (cicd.pipeline.result) and ends the span.
func (t *cliTrace) end(code int) {
	result := map[int]string{ExitOK: "success", ExitFailed: "failure"}[code]
	if result == "" {
		result = "error"
	}
	t.span.SetAttributes(attribute.String("cicd.pipeline.result", result), attribute.Int("process.exit.code", code))
	if code != ExitOK {
		t.span.SetStatus(codes.Error, "kiln build exited "+result)
	}
	t.span.End()
}

// flush exports what is buffered, for flushTimeout at most.
func (t *cliTrace) flush() error {
	if t.sdk == nil {
		return t.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	return t.sdk.Shutdown(ctx)
}

// dialOptions trace the CLI's RPCs under the build's span and send the
// trace context to the gateway (otelgrpc's client stats handler).
func (t *cliTrace) dialOptions() []grpc.DialOption {
	if t == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(t.prop)))}
}

// exportEnabled reports whether the environment asks for OTLP export.
func exportEnabled(lookup func(string) (string, bool)) bool {
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

// newExporter makes the OTLP exporter the environment asks for (grpc by
// default, or http/protobuf); the exporters read the endpoint, headers
// and TLS settings from the process's OTEL_EXPORTER_OTLP_* variables.
func newExporter(ctx context.Context, lookup func(string) (string, bool)) (*otlptrace.Exporter, error) {
	p := "grpc"
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v, _ := lookup(k); strings.TrimSpace(v) != "" {
			p = strings.TrimSpace(v)
			break
		}
	}
	switch p {
	case "grpc":
		return otlptracegrpc.New(ctx)
	case "http/protobuf":
		return otlptracehttp.New(ctx)
	}
	return nil, errors.New("OTEL_EXPORTER_OTLP_PROTOCOL=" + p + " is not supported: use grpc or http/protobuf")
}

// ciAttributes are OpenTelemetry's CI/CD attributes for the CI job the CLI
// runs in, read from GitLab CI's or GitHub Actions' variables.
func ciAttributes(lookup func(string) (string, bool)) []attribute.KeyValue {
	get := func(k string) string { v, _ := lookup(k); return v }
	var attrs []attribute.KeyValue
	add := func(key, value string) {
		if value != "" {
			attrs = append(attrs, attribute.String(key, value))
		}
	}
	switch {
	case get("GITLAB_CI") == "true":
		name := get("CI_PIPELINE_NAME")
		if name == "" {
			name = get("CI_PROJECT_PATH")
		}
		add("cicd.pipeline.name", name)
		add("cicd.pipeline.run.id", get("CI_PIPELINE_ID"))
		add("cicd.pipeline.run.url.full", get("CI_PIPELINE_URL"))
		add("cicd.pipeline.task.name", get("CI_JOB_NAME"))
		add("cicd.pipeline.task.run.id", get("CI_JOB_ID"))
		add("cicd.pipeline.task.run.url.full", get("CI_JOB_URL"))
		add("cicd.worker.id", get("CI_RUNNER_ID"))
		add("cicd.worker.name", get("CI_RUNNER_DESCRIPTION"))
		add("vcs.ref.head.revision", get("CI_COMMIT_SHA"))
	case get("GITHUB_ACTIONS") == "true":
		add("cicd.pipeline.name", get("GITHUB_WORKFLOW"))
		add("cicd.pipeline.run.id", get("GITHUB_RUN_ID"))
		if server, repo, run := get("GITHUB_SERVER_URL"), get("GITHUB_REPOSITORY"), get("GITHUB_RUN_ID"); server != "" && repo != "" && run != "" {
			add("cicd.pipeline.run.url.full", server+"/"+repo+"/actions/runs/"+run)
		}
		add("cicd.pipeline.task.name", get("GITHUB_JOB"))
		add("cicd.worker.id", get("RUNNER_NAME"))
		add("cicd.worker.name", get("RUNNER_NAME"))
		add("vcs.ref.head.revision", get("GITHUB_SHA"))
	}
	return attrs
}
