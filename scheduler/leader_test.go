package scheduler

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// TestStandbyTakesOver: of two schedulers one leads; when it stops, the
// standby takes over and hands out the queued work.
func TestStandbyTakesOver(t *testing.T) {
	f := newFixture(t, nil) // the leader
	holder := func() string {
		kv, err := f.conn.JS.KeyValue(context.Background(), bus.BucketLeader)
		if err != nil {
			t.Fatal(err)
		}
		e, err := kv.Get(context.Background(), leaderKey)
		if err != nil {
			return ""
		}
		l := &kilnv1.LeaderLease{}
		_ = proto.Unmarshal(e.Value(), l)
		return l.Holder
	}
	waitUntil(t, "the first scheduler to lead", func() bool { return holder() != "" })
	before := holder()
	standby, err := New(context.Background(), Config{Conn: f.conn, Lease: time.Minute, SweepEvery: 10 * time.Millisecond, LeaderLease: 300 * time.Millisecond, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopStandby := context.WithCancel(context.Background())
	standbyDone := make(chan error, 1)
	go func() { standbyDone <- standby.Run(sctx) }()
	t.Cleanup(func() { stopStandby(); <-standbyDone })

	first := buildstore.NewID(time.Now())
	f.submit(t, first)
	if got := f.pull(t, "agent-a", 5*time.Second); len(got) != 1 || got[0].Id != first {
		t.Fatalf("pull under the first leader: %v", got)
	}

	f.cancel() // the leader stops and resigns
	if err := <-f.done; err != nil {
		t.Fatal(err)
	}
	f.done <- nil // for the fixture's cleanup
	second := buildstore.NewID(time.Now())
	f.submit(t, second)
	if got := f.pull(t, "agent-b", 5*time.Second); len(got) != 1 || got[0].Id != second {
		t.Fatalf("pull under the standby: %v", got)
	}
	if after := holder(); after == "" || after == before {
		t.Fatalf("leader lease held by %q, before by %q", after, before)
	}
}

// TestLapsedLeaderLeaseIsTakenOver: a leader that died without resigning
// is replaced once its lease lapses, not before.
func TestLapsedLeaderLeaseIsTakenOver(t *testing.T) {
	conn := newFixture(t, nil).conn
	kv, err := conn.JS.KeyValue(context.Background(), bus.BucketLeader)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	el, err := newElector(context.Background(), conn.JS, 10*time.Second, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	ghost, _ := proto.Marshal(&kilnv1.LeaderLease{Holder: "ghost", ExpiresAt: timestamppb.New(clk.Now().Add(5 * time.Second))})
	// The fixture's scheduler may hold the key: overwrite it with a ghost
	// whose lease is still live on our clock.
	if _, err := kv.Put(context.Background(), leaderKey, ghost); err != nil {
		t.Fatal(err)
	}
	if ok, err := el.Try(context.Background()); err != nil || ok {
		t.Fatalf("took a live lease: %v %v", ok, err)
	}
	clk.Advance(6 * time.Second)
	if ok, err := el.Try(context.Background()); err != nil || !ok {
		t.Fatalf("did not take a lapsed lease: %v %v", ok, err)
	}
	if ok, _ := el.Try(context.Background()); !ok {
		t.Fatal("could not renew its own lease")
	}
}
