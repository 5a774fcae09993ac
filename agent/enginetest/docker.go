package enginetest

import (
	"context"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/kilnbuild/kiln/agent/engine"
)

// answerTimeout bounds the check that the engine or registry answers.
const answerTimeout = 10 * time.Second

// Docker returns a client for the engine the tests use (DOCKER_HOST, else the
// default socket), closed when the test ends. It fails the test if the engine
// does not answer.
func Docker(t testing.TB) *engine.Docker {
	t.Helper()
	d, err := engine.NewDocker("")
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
	defer cancel()
	if _, err := d.Info(ctx); err != nil {
		t.Fatalf("enginetest: no Docker engine answers at %s: %v\nstart one with `make dev-env`", d.Host(), err)
	}
	return d
}

// APIClient returns a raw Engine API client for the same engine as Docker,
// for what a test checks beyond the agent's view: containers left behind,
// image labels, clean-up. It is closed when the test ends.
func APIClient(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("enginetest: docker client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		t.Fatalf("enginetest: no Docker engine answers at %s: %v\nstart one with `make dev-env`", c.DaemonHost(), err)
	}
	return c
}
