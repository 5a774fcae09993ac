package agent

import (
	"context"
	"errors"
	"io"

	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
)

// farmError marks a failure to reach the farm (NATS, its blob store) while
// preparing a build: the build is not at fault, so the agent hands it back
// to the queue instead of failing it.
type farmError struct{ err error }

func (e *farmError) Error() string { return e.err.Error() }
func (e *farmError) Unwrap() error { return e.err }

// farm marks err as the farm's unless it says something about the build
// itself: a blob that does not exist or does not match its digest.
func farm(err error) error {
	if err == nil || bus.IsNotFound(err) || errors.Is(err, localcas.ErrNotFound) ||
		errors.Is(err, cas.ErrDigestMismatch) || errors.Is(err, cas.ErrBadDigest) || errors.Is(err, context.Canceled) {
		return err
	}
	return &farmError{err: err}
}

// isFarm reports whether err is (or wraps) a farm failure.
func isFarm(err error) bool {
	var fe *farmError
	return errors.As(err, &fe)
}

// errRecorder remembers the first error other than EOF that reading from
// r returned, so a context stream cut by the farm is not blamed on the
// engine that saw the stream end.
type errRecorder struct {
	r   io.ReadCloser
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && e.err == nil {
		e.err = err
	}
	return n, err
}

func (e *errRecorder) Close() error {
	e.r.Close()
	return farm(e.err)
}
