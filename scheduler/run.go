package scheduler

import (
	"context"
	"flag"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/service"
)

// RunOptions are kiln-scheduler's flags.
type RunOptions struct {
	service.Common
	Lease       time.Duration
	MaxAttempts uint
}

// Flags registers the options on fs (each also read from KILN_<FLAG>).
func (o *RunOptions) Flags(fs *flag.FlagSet) {
	o.Common.Flags(fs, "127.0.0.1:7702", `{"http":…}`)
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
	log, conn, err := o.Start(ctx, "scheduler")
	if err != nil {
		return err
	}
	defer conn.Close()
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
