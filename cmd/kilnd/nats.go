package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kilnbuild/kiln/services/bus"
)

// farmNATS is kilnd's embedded NATS server and its connections to it, one
// per role, each with its own credential: the server accepts nobody else.
type farmNATS struct {
	server                    *server.Server
	gateway, scheduler, agent *bus.Conn
}

// startNATS makes the role credentials in <data-dir>/nats-creds on first
// start (directory 0700, seeds 0600, so another local user can neither
// read them nor connect), starts the embedded server requiring them and
// connects each role; the scheduler's connection sets the streams up.
func startNATS(ctx context.Context, o options) (*farmNATS, error) {
	seeds, err := bus.LoadOrCreateSeeds(filepath.Join(o.dataDir, "nats-creds"), o.agent.Name)
	if err != nil {
		return nil, err
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{
		Listen: o.natsListen, StoreDir: filepath.Join(o.dataDir, "nats"), Identities: seeds.Identities,
		// Acknowledged means on disk, as in the cluster (deploy/nats/README.md).
		SyncAlways: true,
	})
	if err != nil {
		return nil, err
	}
	f := &farmNATS{server: ns}
	connect := func(role bus.Role, agent string) (*bus.Conn, error) {
		opts, err := seeds.Options(role, agent)
		if err != nil {
			return nil, err
		}
		return bus.Connect(ctx, ns.ClientURL(), "kilnd-"+string(role), opts...)
	}
	if f.scheduler, err = connect(bus.RoleScheduler, ""); err == nil {
		if f.gateway, err = connect(bus.RoleGateway, ""); err == nil {
			f.agent, err = connect(bus.RoleAgent, o.agent.Name)
		}
	}
	if err == nil {
		err = bus.Setup(ctx, f.scheduler.JS, o.sched.Limits())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Ready reports whether every role's connection is up, for /readyz.
func (f *farmNATS) Ready(ctx context.Context) error {
	return errors.Join(f.gateway.Ready(ctx), f.scheduler.Ready(ctx), f.agent.Ready(ctx))
}

// Close closes the connections, then stops the server.
func (f *farmNATS) Close() {
	f.agent.Close()
	f.gateway.Close()
	f.scheduler.Close()
	f.server.Shutdown()
	f.server.WaitForShutdown()
}

// natsCredsCommand is `kilnd nats-creds DIR AGENT...`: it makes (or reads)
// the nkey seeds of the gateway, the scheduler and each named agent in DIR
// and writes DIR/auth.conf, the nats-server authorization block with each
// role's permissions, for a farm that runs its own NATS servers (see
// deploy/nats/README.md).
func natsCredsCommand(args []string) int {
	fs := flag.NewFlagSet("kilnd nats-creds", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: kilnd nats-creds DIR AGENT...\n\n"+
			"Make the NATS nkey seeds of the gateway, the scheduler and each named agent in DIR\n"+
			"(mode 0600; existing seeds are kept) and write DIR/auth.conf, the nats-server\n"+
			"authorization block that accepts them with each role's permissions.\n"+
			"Give each service its seed with --nats-nkey-file; include auth.conf in nats-server.conf.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return 2
	}
	dir := fs.Arg(0)
	seeds, err := bus.LoadOrCreateSeeds(dir, fs.Args()[1:]...)
	if err == nil {
		var conf string
		if conf, err = bus.AuthorizationConfig(seeds.Identities); err == nil {
			err = os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(conf), 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		return 1
	}
	for _, id := range seeds.Identities {
		what := string(id.Role)
		if id.Role == bus.RoleAgent {
			what += " " + id.Agent
		}
		fmt.Printf("%-24s %s  %s\n", what, id.PublicKey, seeds.File(id.Role, id.Agent))
	}
	fmt.Fprintf(os.Stderr, "kilnd: nats-server authorization in %s\n", filepath.Join(dir, "auth.conf"))
	return 0
}
