package engine_test

import (
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// startBuildKitd starts a cold rootful buildkitd for the test
// (enginetest.StartBuildKitd) and returns a client of it; t.Cleanup
// closes the client and stops the daemon.
func startBuildKitd(t *testing.T) *engine.BuildKitd {
	t.Helper()
	return newBuildKitd(t, enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{}).Addr)
}

// newBuildKitd is a client of the buildkitd at addr, closed by t.Cleanup.
func newBuildKitd(t *testing.T, addr string) *engine.BuildKitd {
	t.Helper()
	b, err := engine.NewBuildKitd(t.Context(), addr, engine.TLSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
