package gateway

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/cas"
)

// toStatus turns an internal error into a gRPC status once, at the edge.
// Errors that already carry a status keep their code.
func toStatus(err error) error {
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
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
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

func unaryStatus(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	return resp, toStatus(err)
}

func streamStatus(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return toStatus(h(srv, ss))
}
