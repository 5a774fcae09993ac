package gateway

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A handler runs without the client's deadline, so that nats.go bounds
// each NATS request by its own timeout, and a NATS request that times out
// while the client still waits is Unavailable (retry).
func TestUnaryHandlerRunsWithoutTheClientDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	_, err := unaryStatus(ctx, nil, nil, func(hctx context.Context, _ any) (any, error) {
		if d, ok := hctx.Deadline(); ok {
			t.Errorf("handler context has the client's deadline %v", d)
		}
		rctx, rcancel := context.WithTimeout(hctx, time.Millisecond) // nats.go's own request timeout
		defer rcancel()
		<-rctx.Done() // a NATS request nobody answers
		return nil, rctx.Err()
	})
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("code = %v (%v), want Unavailable", got, err)
	}
}

// The client going away still ends a stream handler.
func TestStreamHandlerEndsWithTheClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	ss := contextStream{ctx: ctx} // the client's stream
	err := streamStatus(nil, ss, nil, func(_ any, s grpc.ServerStream) error {
		if _, ok := s.Context().Deadline(); ok {
			t.Error("stream handler context has the client's deadline")
		}
		cancel()
		<-s.Context().Done()
		return s.Context().Err()
	})
	if got := status.Code(err); got != codes.Canceled {
		t.Fatalf("code = %v (%v), want Canceled", got, err)
	}
}
