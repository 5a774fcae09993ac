package telemetry

import (
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"google.golang.org/grpc"
)

// traced leaves health checks and server reflection out of traces: load
// balancers and probes call them every few seconds.
var traced = otelgrpc.WithFilter(filters.None(filters.HealthCheck(), filters.ServicePrefix("grpc.reflection.")))

// ServerOptions are the gRPC server options that trace incoming calls
// (otelgrpc's stats handler), continuing the caller's trace.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(traced))}
}

// DialOptions are the gRPC dial options that trace outgoing calls and send
// the trace context with them.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(traced))}
}
