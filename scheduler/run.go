package scheduler

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/config"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/service"
)

// RunOptions are kiln-scheduler's flags.
type RunOptions struct {
	service.Common
	Lease       time.Duration
	MaxAttempts uint
	RouteDelay  time.Duration
	LeaderLease time.Duration
	Weights     config.Labels
	Caps        config.Labels
	DefaultCap  int
	// OutputTTL is how long KILN_OUTPUTS keeps a build's --output export.
	OutputTTL time.Duration
}

// routingConfig turns the flags into the router's configuration.
func (o *RunOptions) routingConfig() (routing.Config, error) {
	c := routing.Config{Delay: o.RouteDelay, DefaultCap: o.DefaultCap, TenantWeights: map[string]int{}, TenantCaps: map[string]int{}}
	for flagName, in := range map[string]config.Labels{"tenant-weights": o.Weights, "tenant-caps": o.Caps} {
		out := c.TenantWeights
		if flagName == "tenant-caps" {
			out = c.TenantCaps
		}
		for tenant, v := range in {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return c, fmt.Errorf("--%s: %s=%q is not a non-negative number", flagName, tenant, v)
			}
			out[tenant] = n
		}
	}
	return c, nil
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
	fs.DurationVar(&o.LeaderLease, "leader-lease", DefaultLeaderLease, "how long a scheduler leads without renewing; a standby takes over after it lapses")
	fs.DurationVar(&o.RouteDelay, "route-delay", DefaultRouteDelay, "how long a build waits for a busy agent holding its cache before it runs elsewhere")
	o.Weights, o.Caps = config.Labels{}, config.Labels{}
	fs.Var(o.Weights, "tenant-weights", "tenant=weight,… for weighted round-robin across tenants (default weight 1)")
	fs.Var(o.Caps, "tenant-caps", "tenant=max,… builds a tenant may run at once")
	fs.IntVar(&o.DefaultCap, "default-tenant-cap", 0, "builds any other tenant may run at once (0: no cap)")
	fs.DurationVar(&o.OutputTTL, "output-ttl", bus.DefaultOutputTTL, "how long a build's --output export stays in NATS for its client to fetch")
}

// Limits are the bus limits of the common flags with --output-ttl: the
// scheduler is the service that sets KILN_OUTPUTS' TTL.
func (o *RunOptions) Limits() bus.Limits {
	l := o.Common.Limits()
	l.OutputTTL = o.OutputTTL
	return l
}

// Config returns the scheduler configuration the flags describe.
func (o *RunOptions) Config(conn *bus.Conn, log *slog.Logger, lease time.Duration) (Config, error) {
	rc, err := o.routingConfig()
	if err != nil {
		return Config{}, err
	}
	return Config{Conn: conn, Logger: log, Lease: lease, MaxAttempts: uint32(o.MaxAttempts), LeaderLease: o.LeaderLease, Routing: rc}, nil
}

// Run connects to NATS and schedules until ctx ends.
func Run(ctx context.Context, o RunOptions) error {
	log, conn, err := o.StartClient(ctx, "scheduler")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := bus.Setup(ctx, conn.JS, o.Limits()); err != nil {
		return err
	}
	cfg, err := o.Config(conn, log, o.Lease)
	if err != nil {
		return err
	}
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	hs, err := httpserver.Listen(o.HTTPListen, httpserver.Check{Name: "nats", Check: conn.Ready})
	if err != nil {
		return err
	}
	// The scheduler stops (and resigns) before the HTTP server.
	parts := service.NewGroup(ctx, log)
	parts.Go("http", hs.Serve)
	parts.Go("scheduler", s.Run)
	if err := readyfile.Write(o.ReadyFile, map[string]string{"http": hs.Addr()}); err != nil {
		return errors.Join(err, parts.Stop())
	}
	log.Info("scheduler running", "http", hs.Addr())
	return parts.Wait(ctx)
}
