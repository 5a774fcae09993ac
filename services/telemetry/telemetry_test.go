package telemetry

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestEnabledAndProtocol(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		enabled  bool
		protocol string
	}{
		{"nothing set", nil, false, "grpc"},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, true, "grpc"},
		{"traces endpoint, http", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, "http/protobuf"},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, false, "http/protobuf"},
		{"SDK disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, false, "grpc"},
		{"blank endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, false, "grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			if got := enabled(lookup); got != tc.enabled {
				t.Errorf("enabled = %v, want %v", got, tc.enabled)
			}
			if got := protocol(lookup); got != tc.protocol {
				t.Errorf("protocol = %q, want %q", got, tc.protocol)
			}
		})
	}
}

// TestSetupWithoutEndpointPropagates: with no exporter, a caller's trace
// context still reaches the build record and NATS headers, so the farm's
// spans join the caller's trace wherever spans are recorded.
func TestSetupWithoutEndpointPropagates(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := Setup(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())

	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	ctx := ExtractMap(context.Background(), map[string]string{"traceparent": parent})
	m := InjectMap(ctx)
	if m["traceparent"] != parent {
		t.Fatalf("InjectMap = %v, want traceparent %s", m, parent)
	}
	h := nats.Header{}
	InjectNATS(ctx, h)
	back := trace.SpanContextFromContext(ExtractNATS(context.Background(), h))
	if back.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" || back.SpanID().String() != "b7ad6b7169203331" || !back.IsRemote() {
		t.Fatalf("through NATS headers %v: got %v", h, back)
	}
	b := &kilnv1.Build{TraceContext: m}
	if got := trace.SpanContextFromContext(BuildContext(context.Background(), b)); got.TraceID() != back.TraceID() {
		t.Fatalf("BuildContext trace %s, want %s", got.TraceID(), back.TraceID())
	}
	if InjectMap(context.Background()) != nil {
		t.Fatal("InjectMap of a context without a span is not nil")
	}
}
