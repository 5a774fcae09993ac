package kiln

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// invalidArgument is a mistake the caller can fix, found before anything
// was sent. It reads as its message alone and converts to a
// codes.InvalidArgument status.
type invalidArgument struct{ msg string }

func invalidArgumentf(format string, args ...any) error {
	return &invalidArgument{msg: fmt.Sprintf(format, args...)}
}

func (e *invalidArgument) Error() string { return e.msg }

// GRPCStatus lets status.FromError and status.Code see the code.
func (e *invalidArgument) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.msg)
}
