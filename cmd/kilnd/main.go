// Command kilnd is kiln all in one process: an embedded NATS server with
// JetStream on --data-dir, the gateway, the scheduler and one agent on the
// local Docker engine. It is the default way to run kiln on one machine.
//
// The farm's secrets key (see package sealed) lives in
// <data-dir>/secrets.key, made on first start: the gateway hands out its
// public half, the agent opens build secrets with it. `kilnd secrets-key
// [PATH]` makes or reads such a key file and prints the public key, for
// farms that run kiln-gateway and kiln-agent separately.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/config"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/logging"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/sealed"
	"github.com/kilnbuild/kiln/services/telemetry"
)

type options struct {
	listen, httpListen, natsListen string
	dataDir, readyFile, logLevel   string
	sched                          scheduler.RunOptions
	limits                         gateway.Limits
	agent                          agent.EngineOptions
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "secrets-key" {
		os.Exit(secretsKeyCommand(os.Args[2:]))
	}
	var o options
	fs := flag.NewFlagSet("kilnd", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7700", "gRPC listen address (port 0 picks a free port)")
	fs.StringVar(&o.httpListen, "http-listen", "127.0.0.1:7701", "HTTP listen address for /healthz, /readyz, /metrics")
	fs.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:7722", "embedded NATS listen address")
	fs.StringVar(&o.dataDir, "data-dir", defaultDataDir(), "where kilnd keeps its state")
	fs.StringVar(&o.readyFile, "ready-file", "", "write {\"grpc\":…,\"http\":…,\"nats\":…} to this file once every part is serving")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	o.sched.SchedulingFlags(fs)
	o.limits.Flags(fs)
	o.agent.Flags(fs, agent.DefaultKilndDrainTimeout)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		os.Exit(2)
	}
	if o.agent.Name == "" {
		o.agent.Name = "kilnd"
	}
	log, err := logging.New(os.Stderr, o.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutdownTracing, err := telemetry.Setup(ctx, "kilnd")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		os.Exit(2)
	}
	err = run(ctx, o, log)
	flushTracing(shutdownTracing)
	if err != nil {
		log.Error("kilnd failed", "err", err)
		os.Exit(1)
	}
}

// flushTracing exports the spans still buffered, for a few seconds at most.
func flushTracing(shutdown func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = shutdown(ctx)
}

// run starts every part, and on ctx's end stops them in dependency order:
// the agent drains first (the gateway keeps relaying its events), then the
// gateway and scheduler, then the NATS connection and server.
func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: o.natsListen, StoreDir: filepath.Join(o.dataDir, "nats")})
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	conn, err := bus.Connect(ctx, ns.ClientURL(), "kilnd")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		return err
	}

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
	gw, err := gateway.New(ctx, gateway.Config{Conn: conn, Logger: log.With("service", "gateway"), Limits: o.limits, SecretsKey: &secretsPublicKey})
	if err != nil {
		return err
	}
	schedCfg, err := o.sched.Config(conn, log.With("service", "scheduler"), o.agent.Lease)
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
	ag, closeEngine, err := o.agent.NewAgent(ctx, conn, agent.Config{Logger: log.With("service", "agent"), ContextLimits: o.limits.Context, SecretsKey: secretsKey})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer closeEngine()

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", o.listen, err)
	}
	hs, err := httpserver.Listen(o.httpListen,
		httpserver.Check{Name: "nats", Check: conn.Ready},
		httpserver.Check{Name: "engine", Check: ag.Ready})
	if err != nil {
		lis.Close()
		return err
	}

	background := context.WithoutCancel(ctx)
	svcCtx, stopServices := context.WithCancel(background)
	defer stopServices()
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Serve(svcCtx, lis, hs) }()
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(svcCtx) }()
	ag.Announce(ctx)
	agentCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	agentDone := make(chan error, 1)
	go func() { agentDone <- ag.Run(agentCtx) }()

	if err := readyfile.Write(o.readyFile, map[string]string{
		"grpc": lis.Addr().String(), "http": hs.Addr(), "nats": ns.ClientURL(),
	}); err != nil {
		return err
	}
	log.Info("kilnd serving", "grpc", lis.Addr().String(), "http", hs.Addr(), "nats", ns.ClientURL(), "data_dir", o.dataDir, "agent", o.agent.Name,
		"secrets_key_id", secretsKey.KeyID())

	var errs []error
	select {
	case <-ctx.Done():
	case err := <-gwDone:
		errs = append(errs, fmt.Errorf("gateway: %w", err))
		gwDone <- nil
	case err := <-schedDone:
		errs = append(errs, fmt.Errorf("scheduler: %w", err))
		schedDone <- nil
	}
	log.Info("kilnd stopping: draining the agent", "drain_timeout", o.agent.DrainTimeout)
	stopAgent()
	errs = append(errs, <-agentDone)
	stopServices()
	errs = append(errs, <-gwDone, <-schedDone)
	log.Info("kilnd stopped")
	return errors.Join(errs...)
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
