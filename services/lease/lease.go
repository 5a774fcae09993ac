// Package lease holds a compare-and-swap lease on one key of the KV bucket
// bus.BucketLeader (KILN_LEADER): the scheduler's leadership and the CAS
// garbage collector's turn are both such leases.
package lease

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
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/services/bus"
)

// Lease is one contender for the lease record (a kilnv1.LeaderLease) at a
// key of KILN_LEADER. The holder renews it with compare-and-swap before it
// lapses; another contender takes it once it has lapsed, or at once after
// the holder resigned. A Lease is not safe for concurrent use.
type Lease struct {
	kv     jetstream.KeyValue
	key    string
	id     string
	length time.Duration
	now    func() time.Time
	rev    uint64 // revision of our record while we hold it
}

// New opens KILN_LEADER for a contender for the lease at key, each taking
// or renewal of which lasts length on the clock now. The contender's id is
// host-pid-random, unique to this Lease.
func New(ctx context.Context, js jetstream.JetStream, key string, length time.Duration, now func() time.Time) (*Lease, error) {
	kv, err := js.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketLeader, err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	return &Lease{kv: kv, key: key, id: id, length: length, now: now}, nil
}

// ID is the holder name this contender writes into the lease record.
func (l *Lease) ID() string { return l.id }

// Try takes or renews the lease and reports whether this contender holds
// it now. The record carries the holder's kiln version (GetFarmInfo). Losing a race to another contender is (false, nil).
func (l *Lease) Try(ctx context.Context) (bool, error) {
	data, err := proto.Marshal(&kilnv1.LeaderLease{Holder: l.id, ExpiresAt: timestamppb.New(l.now().Add(l.length)), Version: version.String()})
	if err != nil {
		return false, fmt.Errorf("encode lease %s: %w", l.key, err)
	}
	entry, err := l.kv.Get(ctx, l.key)
	switch {
	case bus.IsNotFound(err):
		rev, err := l.kv.Create(ctx, l.key, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // another contender was faster
		}
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", l.key, err)
		}
		l.rev = rev
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read lease %s: %w", l.key, err)
	}
	cur := &kilnv1.LeaderLease{}
	if entry.Operation() == jetstream.KeyValuePut {
		if err := bus.Decode(entry.Value(), cur); err != nil {
			return false, fmt.Errorf("decode lease %s: %w", l.key, err)
		}
	}
	if cur.Holder != l.id && cur.ExpiresAt != nil && l.now().Before(cur.ExpiresAt.AsTime()) {
		return false, nil // someone else holds a live lease
	}
	rev, err := l.kv.Update(ctx, l.key, data, entry.Revision())
	if err != nil {
		return false, nil // lost a race for it
	}
	l.rev = rev
	return true, nil
}

// Resign gives the lease up if this contender still holds it, so that
// another takes it at once rather than when it lapses.
func (l *Lease) Resign(ctx context.Context) {
	if l.rev != 0 {
		_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
		l.rev = 0
	}
}
