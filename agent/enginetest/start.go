package enginetest

import "os"

// BusyboxRef returns the reference under which engines from Start hold the
// busybox base image: REGISTRY/kiln-test/busybox:1, REGISTRY being
// KILN_TEST_REGISTRY or else DefaultRegistry. It is the name BusyboxBase
// pushes the same image (same ID) to the registry under, so a Dockerfile
// built FROM it means the same image on a fresh engine and in the registry.
func BusyboxRef() string {
	reg := os.Getenv("KILN_TEST_REGISTRY")
	if reg == "" {
		reg = DefaultRegistry
	}
	return reg + "/" + BusyboxRepo + ":" + BusyboxTag
}

// Start starts an engine as StartEngine does, for a program rather than a
// test (benchmarks): a dockerd with its own socket, data root and bridge,
// returned once it answers and holds the busybox base under BusyboxRef. The
// engine's caches start empty. The caller owns the engine and must Stop it;
// if the program dies first, the dockerd is sent SIGTERM.
func Start(name string) (*Engine, error) {
	return startEngine(name, BusyboxRef())
}

// Stop removes the engine's containers, stops its dockerd by pid (SIGTERM,
// then SIGKILL after a deadline), deletes its bridge and removes its
// directories. It is for engines from Start; StartEngine's are stopped by
// the test's cleanup.
func (e *Engine) Stop() error {
	return e.stop()
}
