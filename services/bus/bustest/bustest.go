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

// Farm is a real NATS server that requires credentials: the farm's roles'
// nkeys with the permissions kilnd's embedded server gives them.
type Farm struct {
	URL   string
	Seeds bus.Seeds
}

// AuthFarm starts a server that accepts only the gateway, the scheduler and
// the named agents, each with its role's permissions, and sets kiln's
// streams up with the scheduler's credential; it stops when the test ends.
func AuthFarm(t testing.TB, agents ...string) *Farm {
	t.Helper()
	seeds, err := bus.LoadOrCreateSeeds(t.TempDir(), agents...)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), Identities: seeds.Identities})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	f := &Farm{URL: ns.ClientURL(), Seeds: seeds}
	conn := f.Conn(t, bus.RoleScheduler, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	return f
}

// Conn connects to the farm as role (agent: the agent's name, with its
// inbox prefix); the connection closes when the test ends.
func (f *Farm) Conn(t testing.TB, role bus.Role, agent string) *bus.Conn {
	t.Helper()
	opts, err := f.Seeds.Options(role, agent)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := bus.Connect(ctx, f.URL, t.Name()+"-"+string(role)+"-"+agent, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return conn
}
