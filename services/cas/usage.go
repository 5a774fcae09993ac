package cas

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// QuotaError says a tenant's context blobs would exceed its CAS quota.
type QuotaError struct {
	Tenant string
	// Usage is what the tenant stores now, Quota its bound and Need the
	// bytes it asked to store.
	Usage, Quota, Need int64
}

// Error says who is over which quota by how much, for the person to act on.
func (e *QuotaError) Error() string {
	return fmt.Sprintf("tenant %q stores %s of context blobs, quota %s; %s more would exceed it (blobs no recent build references are deleted after the retention period)",
		e.Tenant, formatBytes(e.Usage), formatBytes(e.Quota), formatBytes(e.Need))
}

// Usage keeps each tenant's charged CAS bytes in KV KILN_CAS_USAGE. The
// gateway charges a tenant for each blob it uploads that the farm lacked
// (before storing it) and the collector credits the owner when it deletes
// the blob. Every change is a compare-and-swap on the tenant's key, so
// concurrent gateways never lose an update.
type Usage struct {
	kv jetstream.KeyValue
}

// OpenUsage binds to KILN_CAS_USAGE (created by bus.Setup).
func OpenUsage(ctx context.Context, js jetstream.JetStream) (*Usage, error) {
	kv, err := js.KeyValue(ctx, bus.BucketCASUsage)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketCASUsage, err)
	}
	return &Usage{kv: kv}, nil
}

// usageKey is the tenant's key: hex, since tenant names need not be KV keys.
func usageKey(tenant string) string { return "t" + hex.EncodeToString([]byte(tenant)) }

// Get returns the bytes charged to tenant.
func (u *Usage) Get(ctx context.Context, tenant string) (int64, error) {
	n, _, err := u.get(ctx, tenant)
	return n, err
}

func (u *Usage) get(ctx context.Context, tenant string) (int64, uint64, error) {
	e, err := u.kv.Get(ctx, usageKey(tenant))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read CAS usage of tenant %q: %w", tenant, err)
	}
	n, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("CAS usage of tenant %q: %w", tenant, err)
	}
	return n, e.Revision(), nil
}

// Charge adds n bytes to tenant's usage unless that would take it over
// quota (quota <= 0: unlimited), in which case nothing changes and the
// error is a *QuotaError.
func (u *Usage) Charge(ctx context.Context, tenant string, n, quota int64) error {
	return u.add(ctx, tenant, n, quota)
}

// Credit takes n bytes off tenant's usage (never below zero).
func (u *Usage) Credit(ctx context.Context, tenant string, n int64) error {
	return u.add(ctx, tenant, -n, 0)
}

func (u *Usage) add(ctx context.Context, tenant string, delta, quota int64) error {
	backoff := time.Millisecond
	for {
		cur, rev, err := u.get(ctx, tenant)
		if err != nil {
			return err
		}
		if delta > 0 && quota > 0 && cur+delta > quota {
			return &QuotaError{Tenant: tenant, Usage: cur, Quota: quota, Need: delta}
		}
		next := []byte(strconv.FormatInt(max(cur+delta, 0), 10))
		if rev == 0 {
			_, err = u.kv.Create(ctx, usageKey(tenant), next)
		} else {
			_, err = u.kv.Update(ctx, usageKey(tenant), next, rev)
		}
		if err == nil {
			return nil
		}
		if !bus.IsWrongRevision(err) {
			return fmt.Errorf("update CAS usage of tenant %q: %w", tenant, err)
		}
		// Another writer won the key (one per tenant, so every upload of
		// a busy tenant contends for it): try again after a random pause
		// that grows, so a crowd of writers spreads out instead of spinning.
		select {
		case <-ctx.Done():
			return fmt.Errorf("update CAS usage of tenant %q: %w", tenant, ctx.Err())
		case <-time.After(rand.N(backoff) + time.Millisecond):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// All returns every tenant's usage.
func (u *Usage) All(ctx context.Context) (map[string]int64, error) {
	keys, err := u.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list CAS usage: %w", err)
	}
	out := map[string]int64{}
	for k := range keys.Keys() {
		h, ok := strings.CutPrefix(k, "t")
		raw, err := hex.DecodeString(h)
		if !ok || err != nil {
			continue
		}
		n, err := u.Get(ctx, string(raw))
		if err != nil {
			return nil, err
		}
		out[string(raw)] = n
	}
	return out, nil
}
