// Command kilnd is kiln all in one process: an embedded NATS server with
// JetStream on --data-dir, the gateway, the scheduler and one agent on the
// local Docker engine. It is the default way to run kiln on one machine.
//
// The farm's secrets key (see package sealed) lives in
// <data-dir>/secrets.key, made on first start: the gateway hands out its
// public half, the agent opens build secrets with it. `kilnd secrets-key
// [PATH]` makes or reads such a key file and prints the public key, for
// farms that run kiln-gateway and kiln-agent separately.
//
// Without --tenants-file kilnd runs one local tenant that needs no token,
// and refuses a --listen that is not loopback. `kilnd tenants add NAME`
// adds a tenant (or a token to one) to a tenants file and prints the
// token; kilnd --tenants-file FILE then authenticates every call, and
// re-reads FILE on SIGHUP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/logging"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/sealed"
	"github.com/kilnbuild/kiln/services/service"
	"github.com/kilnbuild/kiln/services/tenants"
)

type options struct {
	listen, httpListen, natsListen string
	dataDir, readyFile, logLevel   string
	sched                          scheduler.RunOptions
	limits                         gateway.Limits
	agent                          agent.EngineOptions
	tenants                        gateway.TenantsFlags
	tls                            gateway.TLSFlags
	ui                             gateway.UIFlags
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "secrets-key" {
		os.Exit(secretsKeyCommand(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "nats-creds" {
		os.Exit(natsCredsCommand(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "tenants" {
		os.Exit(tenantsCommand(os.Args[2:], os.Stdout, os.Stderr))
	}
	var o options
	service.Main("kilnd", func(fs *flag.FlagSet) {
		fs.StringVar(&o.listen, "listen", "127.0.0.1:7700", "gRPC listen address (port 0 picks a free port)")
		fs.StringVar(&o.httpListen, "http-listen", "127.0.0.1:7701", "HTTP listen address for /healthz, /readyz, /metrics")
		fs.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:7722", "embedded NATS listen address")
		fs.StringVar(&o.dataDir, "data-dir", defaultDataDir(), "where kilnd keeps its state")
		fs.StringVar(&o.readyFile, "ready-file", "", "write {\"grpc\":…,\"http\":…,\"nats\":…} to this file once every part is serving")
		fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
		o.sched.SchedulingFlags(fs)
		o.limits.Flags(fs)
		o.agent.Flags(fs, agent.DefaultKilndDrainTimeout)
		o.tenants.Flags(fs)
		o.tls.Flags(fs)
		o.ui.Flags(fs)
	}, func(ctx context.Context) error {
		if o.agent.Name == "" {
			o.agent.Name = "kilnd"
		}
		log, err := logging.New(os.Stderr, o.logLevel)
		if err != nil {
			return err
		}
		if err := run(ctx, o, log); err != nil {
			log.Error("kilnd failed", "err", err)
			return err
		}
		return nil
	})
}

// run starts every part, and on ctx's end (or a part's failure) stops them
// in dependency order: the agent drains first, then the scheduler, the
// gateway and the NATS connections and server.
func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := o.tenants.CheckListen(o.listen); err != nil {
		return err
	}
	tenantSet, err := o.tenants.Load()
	if err != nil {
		return err
	}
	tlsSrv, err := o.tls.Server()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// The embedded NATS takes only the roles' credentials (nats.go).
	farm, err := startNATS(ctx, o)
	if err != nil {
		return err
	}
	defer farm.Close()
	ns := farm.server

	// The farm's secrets key: made on first start, kept with the data,
	// unless --secrets-key-file names one.
	secretsKeyFile := o.agent.SecretsKeyFile
	if secretsKeyFile == "" {
		secretsKeyFile = filepath.Join(o.dataDir, "secrets.key")
	}
	secretsKey, err := sealed.LoadOrCreatePrivateKey(secretsKeyFile)
	if err != nil {
		return err
	}
	secretsPublicKey := secretsKey.PublicKey()
	gw, err := gateway.New(ctx, gateway.Config{Conn: farm.gateway, Logger: log.With("service", "gateway"), Limits: o.limits, SecretsKey: &secretsPublicKey, Tenants: tenantSet})
	if err != nil {
		return err
	}
	o.tenants.LogMode(log, tenantSet)
	o.tenants.ReloadOnSIGHUP(ctx, gw, log.With("service", "gateway"))
	tlsSrv.ReloadOnSIGHUP(ctx, log.With("service", "gateway"))
	schedCfg, err := o.sched.Config(farm.scheduler, log.With("service", "scheduler"), o.agent.Lease)
	if err != nil {
		return err
	}
	sched, err := scheduler.New(ctx, schedCfg)
	if err != nil {
		return err
	}
	if o.agent.CacheDir == "" {
		o.agent.CacheDir = filepath.Join(o.dataDir, "blob-cache")
	}
	if o.agent.WorkDir == "" {
		o.agent.WorkDir = filepath.Join(o.dataDir, "work")
	}
	ag, closeEngine, err := o.agent.NewAgent(ctx, farm.agent, agent.Config{Logger: log.With("service", "agent"), ContextLimits: o.limits.Context, SecretsKey: secretsKey})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer closeEngine()

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", o.listen, err)
	}
	hs, err := httpserver.Listen(o.httpListen,
		httpserver.Check{Name: "nats", Check: farm.Ready},
		httpserver.Check{Name: "engine", Check: ag.Ready})
	if err != nil {
		lis.Close()
		return err
	}
	hs.Handle("/ui/", gw.UI(o.ui))

	// The parts stop last started first (service.Group): the agent stops
	// taking work and drains while the scheduler still takes its reports
	// and the gateway relays its events; then the scheduler, the gateway
	// (and the HTTP server it serves) and the NATS server, last.
	parts := service.NewGroup(ctx, log)
	parts.Go("nats", func(ctx context.Context) error { <-ctx.Done(); farm.Close(); return nil })
	parts.Go("gateway", func(ctx context.Context) error { return gw.Serve(ctx, lis, hs, tlsSrv.ServerOptions()...) })
	parts.Go("scheduler", sched.Run)
	ag.Announce(ctx)
	parts.Go("agent", func(actx context.Context) error {
		context.AfterFunc(actx, func() { log.Info("kilnd stopping: draining the agent", "drain_timeout", o.agent.DrainTimeout) })
		return ag.Run(actx)
	})

	if err := readyfile.Write(o.readyFile, map[string]string{
		"grpc": lis.Addr().String(), "http": hs.Addr(), "nats": ns.ClientURL(),
	}); err != nil {
		return errors.Join(err, parts.Stop())
	}
	log.Info("kilnd serving", "grpc", lis.Addr().String(), "http", hs.Addr(), "nats", ns.ClientURL(), "data_dir", o.dataDir, "agent", o.agent.Name,
		"secrets_key_id", secretsKey.KeyID(), "tls", o.tls.Enabled(), "mutual_tls", o.tls.ClientCA != "")
	err = parts.Wait(ctx)
	log.Info("kilnd stopped")
	return err
}

func defaultDataDir() string {
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "kiln")
}

// secretsKeyCommand is `kilnd secrets-key [PATH]`: it makes the secrets key
// file at PATH (default <default data dir>/secrets.key) unless one is there,
// and prints its public key, the value for kiln-gateway's
// --secrets-public-key. The file goes to every agent of the farm.
func secretsKeyCommand(args []string) int {
	fs := flag.NewFlagSet("kilnd secrets-key", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kilnd secrets-key [PATH]\n\n"+
			"Make the farm's secrets key file at PATH (default %s) unless it exists,\n"+
			"and print its public key for kiln-gateway --secrets-public-key.\n", filepath.Join(defaultDataDir(), "secrets.key"))
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return 2
	}
	path := filepath.Join(defaultDataDir(), "secrets.key")
	if fs.NArg() == 1 {
		path = fs.Arg(0)
	}
	k, err := sealed.LoadOrCreatePrivateKey(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "kilnd: secrets key %s in %s\n", k.KeyID(), path)
	fmt.Println(k.PublicKey())
	return 0
}

// tenantsCommand is `kilnd tenants add NAME [--file F] [--admin] [--push
// PATTERN ...]`: it adds tenant NAME to the tenants file (or a token to an
// existing NAME, to rotate tokens), and prints the new token on stdout —
// the only time it is shown; the file holds its argon2id hash.
func tenantsCommand(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintf(stderr, "Usage: kilnd tenants add NAME [--file FILE] [--admin] [--push PATTERN ...]\n\n"+
			"Add tenant NAME to the tenants file (default %s), or a new token to an\n"+
			"existing tenant (rotation: remove the old hash from the file later).\n"+
			"Prints the new token once on stdout. Then run kilnd (or kiln-gateway)\n"+
			"with --tenants-file FILE, or send the running one SIGHUP.\n\nOptions:\n", defaultTenantsFile())
	}
	if len(args) == 0 || args[0] != "add" {
		usage()
		return 2
	}
	fs := flag.NewFlagSet("kilnd tenants add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(); fs.PrintDefaults() }
	file := fs.String("file", defaultTenantsFile(), "tenants file to add to (created if missing, mode 0600)")
	admin := fs.Bool("admin", false, "the tenant may list and drain agents")
	var push stringList
	fs.Var(&push, "push", "image namespace the tenant may tag and push, e.g. registry.example.com/team-a/* (repeatable)")
	// NAME may come before, between or after the flags.
	var names []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		names, rest = append(names, fs.Arg(0)), fs.Args()[1:]
	}
	if len(names) != 1 {
		fs.Usage()
		return 2
	}
	name := names[0]
	token, created, err := tenants.AddToken(*file, tenants.AddRequest{Name: name, Admin: *admin, Push: push})
	if err != nil {
		fmt.Fprintln(stderr, "kilnd:", err)
		return 1
	}
	what := "new token for tenant"
	if created {
		what = "tenant added:"
	}
	fmt.Fprintf(stderr, "kilnd: %s %s in %s; the token below is shown only this once.\n"+
		"kilnd: start kilnd with --tenants-file %s, or send the running one SIGHUP to reload it.\n", what, name, *file, *file)
	fmt.Fprintln(stdout, token)
	return 0
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func defaultTenantsFile() string { return filepath.Join(defaultDataDir(), "tenants.yaml") }
