package casgc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// Run sweeps every interval while this process holds the collector's
// lease (key bus.LeaderKeyCASGC in KILN_LEADER, 3 intervals long, renewed
// by every sweep), until ctx ends. Several gateways may call Run; one
// collects at a time.
func (c *Collector) Run(ctx context.Context, js jetstream.JetStream, interval time.Duration) error {
	l, err := newLease(ctx, js, 3*interval, c.cfg.Now)
	if err != nil {
		return err
	}
	defer l.resign(context.WithoutCancel(ctx))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		held, err := l.try(ctx)
		if err != nil {
			c.cfg.Logger.WarnContext(ctx, "CAS garbage collection: lease", "err", err)
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

// lease is a compare-and-swap lease record in KILN_LEADER.
type lease struct {
	kv     jetstream.KeyValue
	id     string
	length time.Duration
	now    func() time.Time
	rev    uint64
}

func newLease(ctx context.Context, js jetstream.JetStream, length time.Duration, now func() time.Time) (*lease, error) {
	kv, err := js.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketLeader, err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &lease{kv: kv, id: fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:])), length: length, now: now}, nil
}

// try takes or renews the lease and reports whether we hold it.
func (l *lease) try(ctx context.Context) (bool, error) {
	data, err := proto.Marshal(&kilnv1.LeaderLease{Holder: l.id, ExpiresAt: timestamppb.New(l.now().Add(l.length))})
	if err != nil {
		return false, err
	}
	entry, err := l.kv.Get(ctx, bus.LeaderKeyCASGC)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		rev, err := l.kv.Create(ctx, bus.LeaderKeyCASGC, data)
		if err != nil {
			return false, nil // another collector was faster
		}
		l.rev = rev
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", bus.LeaderKeyCASGC, err)
	}
	cur := &kilnv1.LeaderLease{}
	if entry.Operation() == jetstream.KeyValuePut {
		if err := bus.Decode(entry.Value(), cur); err != nil {
			return false, err
		}
	}
	if cur.Holder != l.id && cur.ExpiresAt != nil && l.now().Before(cur.ExpiresAt.AsTime()) {
		return false, nil
	}
	rev, err := l.kv.Update(ctx, bus.LeaderKeyCASGC, data, entry.Revision())
	if err != nil {
		return false, nil // lost a race for it
	}
	l.rev = rev
	return true, nil
}

func (l *lease) resign(ctx context.Context) {
	if l.rev != 0 {
		_ = l.kv.Delete(ctx, bus.LeaderKeyCASGC, jetstream.LastRevision(l.rev))
	}
}
