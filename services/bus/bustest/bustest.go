// Package bustest starts a real NATS server (the nats-server library,
// in-process, JetStream on a temporary directory) for tests, with kiln's
// streams and buckets set up.
package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
)

// Conn starts a server on a free loopback port and returns a connection to
// it; both stop when the test ends.
func Conn(t testing.TB) *bus.Conn {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := bus.Connect(ctx, ns.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	return conn
}
