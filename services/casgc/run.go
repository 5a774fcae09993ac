package casgc

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/lease"
)

// Run sweeps every interval while this process holds the collector's
// lease (key bus.LeaderKeyCASGC in KILN_LEADER, 3 intervals long, renewed
// by every sweep), until ctx ends. Several gateways may call Run; one
// collects at a time.
func (c *Collector) Run(ctx context.Context, js jetstream.JetStream, interval time.Duration) error {
	l, err := lease.New(ctx, js, bus.LeaderKeyCASGC, 3*interval, c.cfg.Now)
	if err != nil {
		return err
	}
	defer l.Resign(context.WithoutCancel(ctx))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		held, err := l.Try(ctx)
		if err != nil {
			c.cfg.Logger.WarnContext(ctx, "CAS garbage collection: lease", "err", err)
			clear(c.candidates) // not known to hold it: start afresh
			continue
		}
		if !held {
			clear(c.candidates) // another collector sweeps; start afresh if we take over
			continue
		}
		if _, err := c.Sweep(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.WarnContext(ctx, "CAS garbage collection failed", "err", err)
		}
	}
}
