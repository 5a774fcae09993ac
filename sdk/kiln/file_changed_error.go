package kiln

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FileChangedError says a file of the build context changed (or vanished)
// between the moment kiln listed or hashed it and the moment it read it
// again: the context on disk is not the one the manifest describes, and the
// build must be packed again. It converts to a codes.Aborted status.
type FileChangedError struct {
	// Path is the file's local path.
	Path string
	// While is what kiln was doing with it: "hashing" or "uploading".
	While string
}

// Error names the file and says what to do.
func (e *FileChangedError) Error() string {
	return fmt.Sprintf("file %q changed while kiln was %s it; run the build again", e.Path, e.While)
}

// GRPCStatus lets status.FromError and status.Code see the code.
func (e *FileChangedError) GRPCStatus() *status.Status {
	return status.New(codes.Aborted, e.Error())
}
