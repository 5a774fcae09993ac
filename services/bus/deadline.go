package bus

import "context"

// WithoutDeadline returns a context that carries ctx's values and ends
// when ctx ends, but has no deadline of its own.
//
// nats.go's JetStream calls wait for an answer under the caller's
// context as is when it has a deadline, and apply their own per-request
// timeout (5 s) only when it has none. A request lost with a NATS node
// is never answered, so under a client's far-off deadline a call would
// wait for that deadline — minutes — where under no deadline it fails
// within seconds and can be retried. A server handling a client's call
// therefore makes its NATS calls under WithoutDeadline(ctx): the client
// going away still stops them; its deadline does not stretch them.
func WithoutDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	nctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	return nctx, func() {
		stop()
		cancel(context.Canceled)
	}
}
