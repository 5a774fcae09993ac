package lease

import (
	"context"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestOneContenderHoldsTheLease: a second contender cannot take a live
// lease, takes it once it lapses, and a resigned lease is free at once.
func TestOneContenderHoldsTheLease(t *testing.T) {
	ctx := context.Background()
	js := bustest.Conn(t).JS
	now := time.Now()
	clock := func() time.Time { return now }
	a, err := New(ctx, js, bus.LeaderKeyCASGC, time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(ctx, js, bus.LeaderKeyCASGC, time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name    string
		l       *Lease
		advance time.Duration
		want    bool
	}{
		{"a takes the free lease", a, 0, true},
		{"b is refused a live lease", b, 30 * time.Second, false},
		{"a renews", a, 0, true},
		{"b is still refused", b, 59 * time.Second, false},
		{"b takes the lapsed lease", b, 2 * time.Second, true},
		{"a is refused b's lease", a, 0, false},
	} {
		now = now.Add(step.advance)
		if held, err := step.l.Try(ctx); err != nil || held != step.want {
			t.Fatalf("%s: held = %v, %v", step.name, held, err)
		}
	}
	b.Resign(ctx)
	if held, err := a.Try(ctx); err != nil || !held {
		t.Fatalf("a after b resigned: held = %v, %v", held, err)
	}
	// The record names the holder and its version (GetFarmInfo).
	kv, err := js.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, bus.LeaderKeyCASGC)
	if err != nil {
		t.Fatal(err)
	}
	rec := &kilnv1.LeaderLease{}
	if err := bus.Decode(e.Value(), rec); err != nil || rec.Holder != a.ID() || rec.Version != version.String() || rec.Version == "" {
		t.Fatalf("lease record %v, %v; want holder %s, version %q", rec, err, a.ID(), version.String())
	}
}
