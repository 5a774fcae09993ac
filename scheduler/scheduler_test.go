package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// clock is a hand-driven clock for lease tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	conn   *bus.Conn
	store  *buildstore.Store
	clock  *clock
	cancel context.CancelFunc
	done   chan error
}

func newFixture(t *testing.T, seed func(f *fixture)) *fixture {
	t.Helper()
	conn := bustest.Conn(t)
	store, err := buildstore.Open(context.Background(), conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{conn: conn, store: store, clock: &clock{now: time.Unix(1_700_000_000, 0)}, done: make(chan error, 1)}
	if seed != nil {
		seed(f)
	}
	s, err := New(context.Background(), Config{Conn: conn, Lease: time.Minute, MaxAttempts: 2, SweepEvery: 10 * time.Millisecond, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { f.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-f.done; err != nil {
			t.Errorf("scheduler Run: %v", err)
		}
	})
	return f
}

// queue creates a QUEUED record and returns it with its revision.
func (f *fixture) queue(t *testing.T, id string) (*kilnv1.Build, uint64) {
	t.Helper()
	b := &kilnv1.Build{Id: id, State: kilnv1.BuildState_BUILD_STATE_QUEUED, Spec: &kilnv1.BuildSpec{}}
	rev, err := f.store.Create(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	return b, rev
}

// submit queues a build as the gateway does: record, then an intake
// message carrying the record and its revision.
func (f *fixture) submit(t *testing.T, id string) {
	t.Helper()
	b, rev := f.queue(t, id)
	f.intake(t, &kilnv1.BuildRequested{BuildId: id, Build: b, Revision: rev})
}

func (f *fixture) intake(t *testing.T, req *kilnv1.BuildRequested) {
	t.Helper()
	msg, _ := bus.NewMsg(bus.SubjectRequests, req)
	if _, err := f.conn.JS.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// pull sends one WorkOffer over NATS, as an agent does.
func (f *fixture) pull(t *testing.T, agent string, wait time.Duration) []*kilnv1.Build {
	t.Helper()
	client, err := agentproto.New(f.conn.NC, agent)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
	defer cancel()
	for { // the scheduler may not have subscribed yet
		builds, err := client.Pull(ctx, wait)
		if err == nil {
			return builds
		}
		if ctx.Err() != nil {
			t.Fatalf("work offer: %v", err)
		}
	}
}

func (f *fixture) get(t *testing.T, id string) *kilnv1.Build {
	t.Helper()
	b, _, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func TestRecoversQueueFromKVInOrder(t *testing.T) {
	now := time.Now()
	ids := []string{buildstore.NewID(now), buildstore.NewID(now.Add(time.Millisecond)), buildstore.NewID(now.Add(2 * time.Millisecond))}
	f := newFixture(t, func(f *fixture) {
		for _, id := range ids { // queued while no scheduler ran
			f.queue(t, id)
		}
	})
	for i, want := range ids {
		got := f.pull(t, "agent-a", 5*time.Second)
		if len(got) != 1 || got[0].Id != want {
			t.Fatalf("pull %d got %v, want %s", i, got, want)
		}
		b := f.get(t, want)
		if b.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED || b.Agent != "agent-a" || b.Attempt != 1 {
			t.Fatalf("record after assignment: %v", b)
		}
	}
	if got := f.pull(t, "agent-a", 100*time.Millisecond); len(got) != 0 {
		t.Fatalf("empty queue answered %v", got)
	}
}

func TestIntakeAndCancelledBuildsAreSkipped(t *testing.T) {
	f := newFixture(t, nil)
	cancelled, live := buildstore.NewID(time.Now()), buildstore.NewID(time.Now().Add(time.Millisecond))
	for _, id := range []string{cancelled, live} {
		f.queue(t, id)
		msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: id})
		if _, err := f.conn.JS.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.store.Update(context.Background(), cancelled, func(b *kilnv1.Build) error {
		b.State = kilnv1.BuildState_BUILD_STATE_CANCELLED
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := f.pull(t, "agent-a", 5*time.Second)
	if len(got) != 1 || got[0].Id != live {
		t.Fatalf("pull got %v, want only %s", got, live)
	}
	if b := f.get(t, cancelled); b.State != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		t.Fatalf("cancelled build became %s", b.State)
	}
}

func TestLapsedLeaseRequeuesThenFails(t *testing.T) {
	f := newFixture(t, nil)
	id := buildstore.NewID(time.Now())
	f.queue(t, id)
	msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: id})
	if _, err := f.conn.JS.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if got := f.pull(t, "agent-a", 5*time.Second); len(got) != 1 || got[0].Attempt != 1 {
		t.Fatalf("first pull: %v", got)
	}
	f.clock.Advance(2 * time.Minute) // agent-a never renews
	waitUntil(t, "the build to be re-queued", func() bool {
		return f.get(t, id).State == kilnv1.BuildState_BUILD_STATE_QUEUED
	})
	got := f.pull(t, "agent-b", 5*time.Second)
	if len(got) != 1 || got[0].Attempt != 2 || got[0].Agent != "agent-b" {
		t.Fatalf("second pull: %v", got)
	}
	f.clock.Advance(2 * time.Minute) // agent-b is lost too: MaxAttempts is 2
	waitUntil(t, "the build to fail", func() bool {
		return f.get(t, id).State == kilnv1.BuildState_BUILD_STATE_FAILED
	})
	b := f.get(t, id)
	if b.Error == "" || b.FinishedAt == nil {
		t.Fatalf("failed build lacks its reason: %v", b)
	}
	// Each attempt is in the history, with its agent and why it ended.
	if len(b.Attempts) != 2 {
		t.Fatalf("attempts = %v, want 2", b.Attempts)
	}
	for i, agent := range []string{"agent-a", "agent-b"} {
		a := b.Attempts[i]
		if a.Attempt != uint32(i+1) || a.Agent != agent || a.AssignedAt == nil || a.StartedAt != nil || a.EndedAt == nil ||
			a.EndedAt.AsTime().Before(a.AssignedAt.AsTime()) || a.Reason != buildstore.ReasonNotStarted {
			t.Fatalf("attempt %d = %v, want agent %s assigned, never started, ended %q", i+1, a, agent, buildstore.ReasonNotStarted)
		}
	}
}

// TestAssignmentKeepsChangesMadeAfterIntake: the dispatcher writes
// ASSIGNED in one round trip from the record it read at intake; a record
// changed since is read again, not overwritten.
func TestAssignmentKeepsChangesMadeAfterIntake(t *testing.T) {
	f := newFixture(t, nil)
	id := buildstore.NewID(time.Now())
	f.submit(t, id)
	// Once the intake message is acknowledged the scheduler has read the
	// record; no agent pulls yet, so the build waits in its queue while the
	// record changes behind its back.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := f.conn.JS.Stream(context.Background(), bus.StreamRequests)
		if err == nil && info.CachedInfo().State.Msgs == 0 {
			break
		}
		<-tick.C
	}
	if _, err := f.store.Update(context.Background(), id, func(b *kilnv1.Build) error {
		b.TraceContext = map[string]string{"traceparent": "changed-after-intake"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := f.pull(t, "agent-a", 5*time.Second)
	if len(got) != 1 || got[0].Id != id {
		t.Fatalf("pull got %v, want %s", got, id)
	}
	b := f.get(t, id)
	if b.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED || b.TraceContext["traceparent"] != "changed-after-intake" {
		t.Fatalf("record after assignment: %v", b)
	}
}

// The record an intake message carries may be out of date by the time the
// scheduler reads it: a build cancelled in between is never assigned, and
// the live build behind it is.
func TestStaleRecordInIntakeIsNotAssigned(t *testing.T) {
	f := newFixture(t, nil)
	stale, live := buildstore.NewID(time.Now()), buildstore.NewID(time.Now().Add(time.Millisecond))
	b, rev := f.queue(t, stale)
	if _, err := f.store.Update(context.Background(), stale, func(b *kilnv1.Build) error {
		b.State = kilnv1.BuildState_BUILD_STATE_CANCELLED
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.intake(t, &kilnv1.BuildRequested{BuildId: stale, Build: b, Revision: rev}) // still says QUEUED
	f.submit(t, live)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := f.pull(t, "agent-a", time.Second)
		for _, g := range got {
			if g.Id == stale {
				t.Fatalf("the cancelled build was assigned: %v", g)
			}
		}
		if len(got) == 1 && got[0].Id == live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("live build %s not assigned; last pull %v", live, got)
		}
	}
	if b := f.get(t, stale); b.State != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		t.Fatalf("cancelled build became %s", b.State)
	}
}
