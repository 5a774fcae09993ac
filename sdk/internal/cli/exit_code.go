package cli

import (
	"errors"

	"github.com/kilnbuild/kiln/sdk/kiln"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of the kiln command.
const (
	// ExitOK: the image was built (and pushed, with --push).
	ExitOK = 0
	// ExitFailed: the build failed or was cancelled, or another error.
	ExitFailed = 1
	// ExitUsage: bad flags or arguments, or a request the farm rejected as
	// invalid (InvalidArgument, FailedPrecondition) or not allowed
	// (Unauthenticated: no or a revoked token; PermissionDenied: e.g. a tag
	// outside the tenant's namespaces).
	ExitUsage = 2
	// ExitUnreachable: the gateway could not be reached (Unavailable,
	// DeadlineExceeded).
	ExitUnreachable = 3
)

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// ExitCode maps an error to the command's exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	var failed *kiln.BuildFailedError
	if errors.As(err, &failed) || errors.Is(err, kiln.ErrCancelled) || errors.Is(err, kiln.ErrTimedOut) {
		return ExitFailed
	}
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.Unauthenticated, codes.PermissionDenied:
		return ExitUsage
	case codes.Unavailable, codes.DeadlineExceeded:
		return ExitUnreachable
	}
	return ExitFailed
}
