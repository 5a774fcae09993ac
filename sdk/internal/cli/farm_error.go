package cli

import (
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reportFarmError prints an error from a call to the gateway at gateway
// about build id ("" when the call was about no build) to w, in words a
// person can act on, and returns the command's exit code for it.
func reportFarmError(w io.Writer, gateway, id string, err error) int {
	code := ExitCode(err)
	switch {
	case code == ExitUnreachable:
		fmt.Fprintf(w, "ERROR: cannot reach the kiln gateway at %s: %v\n", gateway, err)
	case status.Code(err) == codes.NotFound && id != "":
		fmt.Fprintf(w, "ERROR: no build %q: it does not exist or is another tenant's ('kiln ls' lists yours)\n", id)
	case status.Code(err) == codes.Unimplemented:
		fmt.Fprintf(w, "ERROR: the kiln gateway at %s does not offer this yet (upgrade the farm): %v\n", gateway, status.Convert(err).Message())
	default:
		fmt.Fprintf(w, "ERROR: %v\n", err)
	}
	return code
}
