package scheduler

import (
	"context"
	"flag"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/logging"
	"github.com/kilnbuild/kiln/services/readyfile"
)

// RunOptions are kiln-scheduler's flags.
type RunOptions struct {
	NATSURL     string
	HTTPListen  string
	ReadyFile   string
	LogLevel    string
	Lease       time.Duration
	MaxAttempts uint
}

// Flags registers the options on fs (each also read from KILN_<FLAG>).
func (o *RunOptions) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&o.HTTPListen, "http-listen", "127.0.0.1:7702", "HTTP listen address for /healthz, /readyz, /metrics")
	fs.StringVar(&o.ReadyFile, "ready-file", "", "write {\"http\":…} to this file once serving")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.Lease, "lease", DefaultLease, "how long an agent holds a build without renewing")
	o.SchedulingFlags(fs)
}

// SchedulingFlags registers the scheduling options that kilnd shares
// (kilnd's --lease serves its scheduler and its agent alike).
func (o *RunOptions) SchedulingFlags(fs *flag.FlagSet) {
	fs.UintVar(&o.MaxAttempts, "max-attempts", DefaultMaxAttempts, "agents a build may lose before it fails")
}

// Run connects to NATS and schedules until ctx ends.
func Run(ctx context.Context, o RunOptions) error {
	log, err := logging.New(os.Stderr, o.LogLevel)
	if err != nil {
		return err
	}
	log = log.With("service", "scheduler")
	conn, err := bus.Connect(ctx, o.NATSURL, "kiln-scheduler")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		return err
	}
	s, err := New(ctx, Config{Conn: conn, Logger: log, Lease: o.Lease, MaxAttempts: uint32(o.MaxAttempts)})
	if err != nil {
		return err
	}
	hs, err := httpserver.Listen(o.HTTPListen, httpserver.Check{Name: "nats", Check: conn.Ready})
	if err != nil {
		return err
	}
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return hs.Serve(ctx) })
	eg.Go(func() error { return s.Run(ctx) })
	if err := readyfile.Write(o.ReadyFile, map[string]string{"http": hs.Addr()}); err != nil {
		return err
	}
	log.Info("scheduler running", "http", hs.Addr())
	return eg.Wait()
}
