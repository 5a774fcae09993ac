// Package service is what every standalone kiln binary (kiln-gateway,
// kiln-scheduler, kiln-agent) shares: the common flags, start-up (logger,
// NATS connection, streams and buckets) and a main that parses flags from
// the command line and KILN_ variables and stops on SIGINT/SIGTERM.
package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/config"
	"github.com/kilnbuild/kiln/services/logging"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// Common are the flags every standalone service has.
type Common struct {
	NATSURL    string
	HTTPListen string
	ReadyFile  string
	LogLevel   string
	// NATSAuth is the service's NATS credential and TLS (none: connect
	// anonymously, as to a dev cluster without auth).
	NATSAuth bus.ClientAuth
	// NATSReplicas is how many NATS nodes hold each stream, bucket and
	// object store (1 on a single server, 3 in a 3-node cluster).
	NATSReplicas int
}

// Flags registers the common flags; httpListen is the service's default
// HTTP address and ready names the keys its ready file holds.
func (c *Common) Flags(fs *flag.FlagSet, httpListen, ready string) {
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&c.HTTPListen, "http-listen", httpListen, "HTTP listen address for /healthz, /readyz, /metrics (port 0 picks a free port)")
	fs.StringVar(&c.ReadyFile, "ready-file", "", "write "+ready+" to this file once serving")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.NATSAuth.NkeyFile, "nats-nkey-file", "", "file with this service's NATS nkey seed (mode 0600); see deploy/nats")
	fs.StringVar(&c.NATSAuth.CredsFile, "nats-creds", "", "NATS user credentials file (JWT and seed), instead of --nats-nkey-file")
	fs.StringVar(&c.NATSAuth.TLSCA, "nats-tls-ca", "", "CA certificate file to verify the NATS servers with")
	fs.StringVar(&c.NATSAuth.TLSCert, "nats-tls-cert", "", "client certificate file for NATS servers that verify clients")
	fs.StringVar(&c.NATSAuth.TLSKey, "nats-tls-key", "", "key file of --nats-tls-cert")
	fs.IntVar(&c.NATSReplicas, "nats-replicas", 1, "replicas of every stream, bucket and object store (3 in a 3-node NATS cluster); existing ones are raised in place")
}

// Limits are bus.DefaultLimits with the replica count of --nats-replicas.
func (c *Common) Limits() bus.Limits {
	l := bus.DefaultLimits
	if c.NATSReplicas > 0 {
		l.Replicas = c.NATSReplicas
	}
	return l
}

// Start makes the service's logger and connects to NATS with kiln's
// streams and buckets set up (the gateway and the scheduler may; agents use
// StartClient). The caller closes the connection.
func (c *Common) Start(ctx context.Context, name string) (*slog.Logger, *bus.Conn, error) {
	log, conn, err := c.StartClient(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if err := bus.Setup(ctx, conn.JS, c.Limits()); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return log, conn, nil
}

// StartClient makes the service's logger and connects to NATS with its
// credential and extra options, setting nothing up. The caller closes the
// connection.
func (c *Common) StartClient(ctx context.Context, name string, extra ...nats.Option) (*slog.Logger, *bus.Conn, error) {
	log, err := logging.New(os.Stderr, c.LogLevel)
	if err != nil {
		return nil, nil, err
	}
	log = log.With("service", name)
	opts, err := c.NATSAuth.Options()
	if err != nil {
		return nil, nil, err
	}
	conn, err := bus.Connect(ctx, c.NATSURL, "kiln-"+name, append(opts, extra...)...)
	if err != nil {
		return nil, nil, err
	}
	return log, conn, nil
}

// Main is the body of a service's main: it registers and parses the flags
// (exit 2 on a usage error), sets up tracing (telemetry.Setup with name as
// service.name), runs until SIGINT or SIGTERM, flushes the spans, and exits
// 1 if run fails.
func Main(name string, register func(fs *flag.FlagSet), run func(ctx context.Context) error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	register(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutdownTracing, err := telemetry.Setup(ctx, name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	err = run(ctx)
	flushTracing(shutdownTracing)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// flushTracing exports the spans still buffered, for a few seconds at most.
func flushTracing(shutdown func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = shutdown(ctx)
}
