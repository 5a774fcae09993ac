package cli

import (
	"context"
	"errors"
	"fmt"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestExitCode(t *testing.T) {
	wrap := func(c codes.Code) error {
		return fmt.Errorf("starting build: %w", status.Error(c, "x"))
	}
	tests := []struct {
		name string
		err  error
		want int
	}{
		{name: "nil", want: ExitOK},
		{name: "usage", err: &usageError{msg: "bad flag"}, want: ExitUsage},
		{name: "build failed", err: &kiln.BuildFailedError{Build: &kilnv1.Build{State: kilnv1.BuildState_BUILD_STATE_FAILED}}, want: ExitFailed},
		{name: "build cancelled", err: fmt.Errorf("build b1 cancelled: %w", kiln.ErrCancelled), want: ExitFailed},
		{name: "InvalidArgument", err: wrap(codes.InvalidArgument), want: ExitUsage},
		{name: "FailedPrecondition", err: wrap(codes.FailedPrecondition), want: ExitUsage},
		{name: "Unavailable", err: wrap(codes.Unavailable), want: ExitUnreachable},
		{name: "DeadlineExceeded", err: wrap(codes.DeadlineExceeded), want: ExitUnreachable},
		{name: "Unauthenticated", err: wrap(codes.Unauthenticated), want: ExitUsage},
		{name: "PermissionDenied", err: wrap(codes.PermissionDenied), want: ExitUsage},
		{name: "ResourceExhausted", err: wrap(codes.ResourceExhausted), want: ExitFailed},
		{name: "NotFound", err: wrap(codes.NotFound), want: ExitFailed},
		{name: "Canceled", err: wrap(codes.Canceled), want: ExitFailed},
		{name: "Internal", err: wrap(codes.Internal), want: ExitFailed},
		{name: "plain error", err: errors.New("disk full"), want: ExitFailed},
		{name: "context canceled", err: context.Canceled, want: ExitFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExitCode(tt.err); got != tt.want {
				t.Fatalf("ExitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
