package main

import (
	"context"
	"net"
	"sync/atomic"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// receiver is a minimal OTLP/gRPC trace endpoint that counts the spans
// exported to it, so the traced runs pay for a real export.
type receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	spans atomic.Int64
	addr  string
	stop  func()
}

func startReceiver() (*receiver, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{addr: lis.Addr().String()}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, r)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	r.stop = func() { s.Stop(); <-done }
	return r, nil
}

// Export counts a batch of spans.
func (r *receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	var n int64
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += int64(len(ss.GetSpans()))
		}
	}
	r.spans.Add(n)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}
