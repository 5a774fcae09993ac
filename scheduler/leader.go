package scheduler

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
	kvlease "github.com/kilnbuild/kiln/services/lease"
)

// leaderKey is the scheduler leadership's key in KILN_LEADER.
const leaderKey = bus.LeaderKeyScheduler

// DefaultLeaderLease is how long a leader holds office without renewing.
const DefaultLeaderLease = 10 * time.Second

// newElector campaigns for the scheduler leadership in KV KILN_LEADER: a
// lease record (key leaderKey) renewed with compare-and-swap every third of
// its length. Only the holder schedules; a standby takes over when the
// lease lapses, or at once when the leader stops cleanly and resigns.
func newElector(ctx context.Context, js jetstream.JetStream, length time.Duration, now func() time.Time) (*kvlease.Lease, error) {
	return kvlease.New(ctx, js, leaderKey, length, now)
}
