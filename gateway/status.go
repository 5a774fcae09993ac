package gateway

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
)

// toStatus turns an internal error of the call with context ctx into a
// gRPC status once, at the edge. Errors that already carry a status keep
// their code.
//
// A NATS cluster that cannot serve — too few servers up for a stream's
// quorum, nobody answering, a NATS request timing out before the call's
// own deadline, the connection down — is Unavailable with a message that
// says so and to retry: the request did not take effect (StartBuild
// makes sure of it, abandonStart) and a retry, with the same idempotency
// key, is safe.
func toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		code = codes.DeadlineExceeded
	case natsUnavailable(ctx, err):
		return status.Errorf(codes.Unavailable, "the farm's NATS cluster is unavailable (no quorum: too few NATS servers up, or none reachable); retry later: %v", err)
	case errors.Is(err, buildstore.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, cas.ErrDigestMismatch), errors.Is(err, cas.ErrBadDigest), errors.Is(err, rules.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, rules.ErrOverLimit):
		code = codes.ResourceExhausted
	case errors.Is(err, buildstore.ErrBadTransition), errors.Is(err, buildstore.ErrFenced):
		code = codes.FailedPrecondition
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

// unaryStatus and streamStatus run every handler under the client's
// context without its deadline (bus.WithoutDeadline): the client
// cancelling, or its deadline passing, still stops the handler, but each
// NATS request the handler makes is bounded by nats.go's own per-request
// timeout instead of waiting, when a NATS node was lost with the request,
// until a client's far-off deadline. The request then fails Unavailable
// and the client retries.
func unaryStatus(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	hctx, cancel := bus.WithoutDeadline(ctx)
	defer cancel()
	resp, err := h(hctx, req)
	return resp, toStatus(ctx, err)
}

func streamStatus(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	hctx, cancel := bus.WithoutDeadline(ss.Context())
	defer cancel()
	return toStatus(ss.Context(), h(srv, contextStream{ss, hctx}))
}

// contextStream is a server stream whose handler sees ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

// natsUnavailable reports whether err, met by the call with context ctx,
// means the NATS cluster could not serve it (bus.IsUnavailable, or a NATS
// request that timed out while the call's own deadline had not passed).
func natsUnavailable(ctx context.Context, err error) bool {
	return bus.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
}
