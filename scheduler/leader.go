package scheduler

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

// leaderKey is the one key of KILN_LEADER.
const leaderKey = bus.LeaderKeyScheduler

// DefaultLeaderLease is how long a leader holds office without renewing.
const DefaultLeaderLease = 10 * time.Second

// elector campaigns for the scheduler leadership in KV KILN_LEADER: a lease
// record renewed with compare-and-swap every third of its length. Only the
// holder schedules; a standby takes over when the lease lapses, or at once
// when the leader stops cleanly and resigns.
type elector struct {
	kv    jetstream.KeyValue
	id    string
	lease time.Duration
	now   func() time.Time
	rev   uint64 // revision of our record while we hold it
}

func newElector(ctx context.Context, js jetstream.JetStream, lease time.Duration, now func() time.Time) (*elector, error) {
	kv, err := js.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketLeader, err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &elector{kv: kv, id: fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:])), lease: lease, now: now}, nil
}

// try takes or keeps the leadership and reports whether this scheduler
// holds it now.
func (e *elector) try(ctx context.Context) (bool, error) {
	data, err := proto.Marshal(&kilnv1.LeaderLease{Holder: e.id, ExpiresAt: timestamppb.New(e.now().Add(e.lease))})
	if err != nil {
		return false, err
	}
	entry, err := e.kv.Get(ctx, leaderKey)
	switch {
	case bus.IsNotFound(err):
		rev, err := e.kv.Create(ctx, leaderKey, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // another scheduler was faster
		}
		e.rev = rev
		return err == nil, err
	case err != nil:
		return false, err
	}
	cur := &kilnv1.LeaderLease{}
	if entry.Operation() == jetstream.KeyValuePut {
		if err := bus.Decode(entry.Value(), cur); err != nil {
			return false, err
		}
	}
	if cur.Holder != e.id && cur.ExpiresAt != nil && e.now().Before(cur.ExpiresAt.AsTime()) {
		return false, nil // someone else holds a live lease
	}
	rev, err := e.kv.Update(ctx, leaderKey, data, entry.Revision())
	if err != nil {
		return false, nil // lost a race for it
	}
	e.rev = rev
	return true, nil
}

// resign gives up the leadership if this scheduler still holds it.
func (e *elector) resign(ctx context.Context) {
	if e.rev != 0 {
		_ = e.kv.Delete(ctx, leaderKey, jetstream.LastRevision(e.rev))
		e.rev = 0
	}
}
