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
	// ExitTimedOut: the farm cancelled the build when it had run for its
	// --timeout (the code timeout(1) exits with).
	ExitTimedOut = 124
	// ExitInterrupted: the user's interrupt (Ctrl-C) cancelled the build,
	// or a second one stopped following it (128 + SIGINT, as a shell
	// reports a command an interrupt ended).
	ExitInterrupted = 130
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
