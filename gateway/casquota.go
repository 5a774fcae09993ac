package gateway

import (
	"context"
	"errors"
	"flag"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/casgc"
)

// CASLimits bound what tenants keep in KILN_CAS and how long it is kept.
type CASLimits struct {
	// Quota is a tenant's default CAS quota in bytes (--cas-quota; 0:
	// unlimited); a tenant's cas_quota_bytes gives it its own.
	Quota int64
	// Retention keeps the contexts of builds finished this recently
	// (--cas-retention).
	Retention time.Duration
	// Grace keeps blobs stored or touched this recently, and is how long
	// a blob stays unreferenced before it is deleted (--cas-gc-grace).
	Grace time.Duration
	// Interval is how often the collector sweeps (--cas-gc-interval; 0:
	// never, as in tests that construct a Gateway directly).
	Interval time.Duration
}

// DefaultCASLimits are the flags' defaults.
var DefaultCASLimits = CASLimits{Quota: 10 << 30, Retention: 7 * 24 * time.Hour, Grace: time.Hour, Interval: 10 * time.Minute}

// Flags registers the CAS limits.
func (l *CASLimits) Flags(fs *flag.FlagSet) {
	*l = DefaultCASLimits
	fs.Int64Var(&l.Quota, "cas-quota", l.Quota, "bytes of context blobs one tenant may store on the farm, unless its tenant entry says otherwise (0: unlimited)")
	fs.DurationVar(&l.Retention, "cas-retention", l.Retention, "keep the context blobs of builds finished this recently")
	fs.DurationVar(&l.Grace, "cas-gc-grace", l.Grace, "keep blobs stored or touched this recently; delete a blob only once it stayed unreferenced this long")
	fs.DurationVar(&l.Interval, "cas-gc-interval", l.Interval, "how often one gateway (behind a lease) collects unreferenced context blobs (0: never)")
}

func (l CASLimits) withDefaults() CASLimits {
	if l.Retention <= 0 {
		l.Retention = DefaultCASLimits.Retention
	}
	if l.Grace <= 0 {
		l.Grace = DefaultCASLimits.Grace
	}
	return l
}

// rememberFor is how long this gateway's cas.Store vouches for a blob from
// memory: half the grace, so it never vouches for one the collector may
// have deleted since (the collector also announces deletions).
func (l CASLimits) rememberFor() time.Duration { return l.withDefaults().Grace / 2 }

// casQuota returns tenant's CAS quota (0: unlimited): the cas_quota_bytes
// of its entry in the tenants file in force (reloads included), else the
// gateway's --cas-quota.
func (g *Gateway) casQuota(tenant string) int64 {
	if set := g.auth.set.Load(); set != nil {
		if t := set.Lookup(tenant); t != nil && t.CASQuotaBytes != 0 {
			return t.CASQuotaBytes
		}
	}
	return g.limits.CAS.Quota
}

// quotaStatus turns a *cas.QuotaError into ResourceExhausted.
func quotaStatus(err error) error {
	var qe *cas.QuotaError
	if errors.As(err, &qe) {
		casQuotaRefused.Inc()
		return status.Error(codes.ResourceExhausted, qe.Error())
	}
	return err
}

// checkQuota refuses, before anything is stored, a request that would take
// tenant over its quota by need bytes.
func (g *Gateway) checkQuota(ctx context.Context, tenant string, need int64) error {
	quota := g.casQuota(tenant)
	if quota <= 0 || need <= 0 {
		return nil
	}
	used, err := g.usage.Get(ctx, tenant)
	if err != nil {
		return err
	}
	if used+need > quota {
		return quotaStatus(&cas.QuotaError{Tenant: tenant, Usage: used, Quota: quota, Need: need})
	}
	return nil
}

// charge charges tenant for n bytes it is about to store.
func (g *Gateway) charge(ctx context.Context, tenant string, n int64) error {
	return quotaStatus(g.usage.Charge(ctx, tenant, n, g.casQuota(tenant)))
}

// refund gives back a charge whose blob was not stored.
func (g *Gateway) refund(ctx context.Context, tenant string, n int64) {
	if err := g.usage.Credit(context.WithoutCancel(ctx), tenant, n); err != nil {
		g.log.WarnContext(ctx, "refund of a CAS charge failed", "tenant", tenant, "bytes", n, "err", err)
	}
}

// runCAS keeps this gateway's memory of KILN_CAS honest and, every
// --cas-gc-interval while it holds the collector's lease, collects
// unreferenced blobs. It forgets the blobs any collector announces it
// deleted, and forgets the contexts it found complete every rememberFor.
func (g *Gateway) runCAS(ctx context.Context) error {
	sub, err := g.conn.NC.Subscribe(bus.SubjectCASDeleted, func(m *nats.Msg) {
		g.blobs.Forget(strings.Split(string(m.Data), "\n")...)
		g.checked.Purge()
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	l := g.limits.CAS.withDefaults()
	eg, ctx := errgroup.WithContext(ctx)
	if g.limits.CAS.Interval > 0 {
		c := casgc.New(casgc.Config{
			Blobs: g.blobs, Usage: g.usage, Builds: g.builds, NC: g.conn.NC,
			Retention: l.Retention, Grace: l.Grace, Logger: g.log.With("component", "cas-gc"),
		})
		eg.Go(func() error { return c.Run(ctx, g.conn.JS, g.limits.CAS.Interval) })
	}
	eg.Go(func() error {
		t := time.NewTicker(l.rememberFor())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				g.checked.Purge()
			}
		}
	})
	return eg.Wait()
}

var (
	casQuotaRefused = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_gateway_cas_quota_refused_total",
		Help: "Uploads and manifests refused because the tenant's CAS quota would be exceeded.",
	})
	manifestsRefused = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_gateway_manifests_refused_busy_total",
		Help: "PutManifest calls refused because the --manifest-memory budget stayed in use too long.",
	})
	manifestMemoryHeld = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_gateway_manifest_memory_bytes",
		Help: "Bytes of the --manifest-memory budget held by context manifests being received and decoded.",
	})
)
