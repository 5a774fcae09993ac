package gateway

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A unary call whose handler waits on NATS past the gateway's bound ends
// Unavailable (retry) although the client's own deadline is far off.
func TestUnaryCallBoundedWhateverTheClientDeadline(t *testing.T) {
	defer func(d time.Duration) { unaryBound = d }(unaryBound)
	unaryBound = 50 * time.Millisecond

	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	_, err := unaryStatus(ctx, nil, nil, func(hctx context.Context, _ any) (any, error) {
		<-hctx.Done() // a NATS request nobody answers
		return nil, hctx.Err()
	})
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("code = %v (%v), want Unavailable", got, err)
	}
	if ctx.Err() != nil {
		t.Fatal("the client's context ended; the bound did not apply")
	}
}
