package scheduler

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// timeoutFarm is newReportFarm's farm (a real scheduler on a NATS server
// that enforces the roles' permissions) with lease and the records in
// seed written before the scheduler starts, as a predecessor left them.
func timeoutFarm(t *testing.T, lease time.Duration, seed ...*kilnv1.Build) *reportFarm {
	t.Helper()
	f := bustest.AuthFarm(t, "agent-a", "agent-b")
	rf := &reportFarm{gw: f.Conn(t, bus.RoleGateway, ""), a: f.Conn(t, bus.RoleAgent, "agent-a"), b: f.Conn(t, bus.RoleAgent, "agent-b")}
	var err error
	if rf.store, err = buildstore.Open(t.Context(), rf.gw.JS); err != nil {
		t.Fatal(err)
	}
	for _, b := range seed {
		if _, err := rf.store.Create(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(t.Context(), Config{Conn: f.Conn(t, bus.RoleScheduler, ""), Lease: lease, SweepEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler Run: %v", err)
		}
	})
	return rf
}

// submitTimeout queues a build with timeout as the gateway does.
func (rf *reportFarm) submitTimeout(t *testing.T, timeout time.Duration) string {
	t.Helper()
	now := time.Now()
	b := &kilnv1.Build{
		Id: buildstore.NewID(now), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED,
		Spec: &kilnv1.BuildSpec{Timeout: durationpb.New(timeout)}, CreatedAt: timestamppb.New(now), QueuedAt: timestamppb.New(now),
	}
	rev, err := rf.store.Create(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id, Build: b, Revision: rev})
	if _, err := rf.gw.JS.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	return b.Id
}

// waitEnded waits for build id's finished event and returns it with the
// record.
func (rf *reportFarm) waitEnded(t *testing.T, id string) (*kilnv1.Build, *kilnv1.BuildFinished, []*kilnv1.BuildEvent) {
	t.Helper()
	var s snapshot
	waitUntil(t, "build "+id+" to end", func() bool { s = rf.see(t, id); return hasFinished(s) })
	b, _, err := rf.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range s.events {
		if f := ev.GetFinished(); f != nil {
			return b, f, s.events
		}
	}
	panic("unreachable")
}

// wantTimedOut checks a build the farm cancelled for its timeout.
func wantTimedOut(t *testing.T, b *kilnv1.Build, fin *kilnv1.BuildFinished, message string) {
	t.Helper()
	if b.State != kilnv1.BuildState_BUILD_STATE_CANCELLED || !b.TimedOut || b.Error != message || b.FinishedAt == nil {
		t.Fatalf("record: %s timed_out %v error %q, want CANCELLED, timed out, %q", b.State, b.TimedOut, b.Error, message)
	}
	if fin.State != kilnv1.BuildState_BUILD_STATE_CANCELLED || !fin.TimedOut || fin.Error != message {
		t.Fatalf("finished event: %v, want CANCELLED, timed out, %q", fin, message)
	}
}

// TestQueuedBuildTimesOut: a queued build that no agent takes ends
// CANCELLED, timed out, once its timeout has passed since it was accepted;
// an agent pulling afterwards gets nothing.
func TestQueuedBuildTimesOut(t *testing.T) {
	rf := timeoutFarm(t, time.Minute)
	id := rf.submitTimeout(t, 300*time.Millisecond)
	b, fin, _ := rf.waitEnded(t, id)
	wantTimedOut(t, b, fin, "timed out after 300ms")
	if b.Attempt != 0 || len(b.Attempts) != 0 || b.FinishedAt.AsTime().Before(b.CreatedAt.AsTime().Add(300*time.Millisecond)) {
		t.Fatalf("timed-out queued build: attempt %d, attempts %v, finished %v after creation", b.Attempt, b.Attempts, b.FinishedAt.AsTime().Sub(b.CreatedAt.AsTime()))
	}
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ca.Pull(t.Context(), 500*time.Millisecond); len(got) != 0 {
		t.Fatalf("an agent was handed %v, %v", got, err)
	}
}

// TestRunningBuildTimesOut: a running build past its timeout is marked
// cancel_requested and timed_out; its agent sees the request when it
// renews, stops and reports CANCELLED, and the build ends timed out, with
// the timeout's error whatever the agent said, and its attempt's reason.
func TestRunningBuildTimesOut(t *testing.T) {
	rf := timeoutFarm(t, time.Minute)
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	id := rf.submitTimeout(t, time.Second)
	assigned := pullOne(t, ca)
	ctx := t.Context()
	at, running, err := ca.Start(ctx, assigned, time.Minute, agentproto.Hooks{})
	if err != nil || running.State != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatalf("start: %v, %v", running, err)
	}
	// The agent renews until it is asked to stop, as the real one does.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var cur *kilnv1.Build
	for cur == nil || !cur.CancelRequested {
		select {
		case <-ctx.Done():
			t.Fatal("never asked to stop")
		case <-tick.C:
		}
		if cur, err = at.Renew(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if !cur.TimedOut || cur.State != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatalf("asked to stop: %s timed_out %v", cur.State, cur.TimedOut)
	}
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_CANCELLED, &kilnv1.BuildResult{}, "build cancelled"); err != nil {
		t.Fatal(err)
	}
	b, fin, events := rf.waitEnded(t, id)
	wantTimedOut(t, b, fin, "timed out after 1s")
	if fin.Agent != "agent-a" {
		t.Fatalf("finished event names agent %q", fin.Agent)
	}
	var said bool
	for _, ev := range events {
		said = said || ev.GetState().GetMessage() == "timed out after 1s: cancelling"
	}
	if !said {
		t.Fatal("the build's log does not say it timed out before it ended")
	}
	if len(b.Attempts) != 1 {
		t.Fatalf("attempts = %v", b.Attempts)
	}
	if a := b.Attempts[0]; a.Agent != "agent-a" || a.AssignedAt == nil || a.StartedAt == nil || a.EndedAt == nil || a.Reason != buildstore.ReasonTimedOut {
		t.Fatalf("attempt = %v, want agent-a assigned, started, ended %q", a, buildstore.ReasonTimedOut)
	}
}

// TestTimedOutBuildWhoseAgentDoesNotStop: an agent that keeps renewing a
// build past its timeout and never ends it has the build ended by the
// scheduler a lease after the deadline, timed out and without an agent, so
// that the agent's later reports are fenced.
func TestTimedOutBuildWhoseAgentDoesNotStop(t *testing.T) {
	const lease = time.Second
	rf := timeoutFarm(t, lease)
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	id := rf.submitTimeout(t, 200*time.Millisecond)
	assigned := pullOne(t, ca)
	ctx := t.Context()
	at, _, err := ca.Start(ctx, assigned, lease, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan error, 1)
	go func() { // renews for ever, ignoring the cancel, until fenced
		tick := time.NewTicker(lease / 5)
		defer tick.Stop()
		for {
			select {
			case <-renewCtx.Done():
				renewed <- nil
				return
			case <-tick.C:
			}
			if _, err := at.Renew(renewCtx, lease); errors.Is(err, buildstore.ErrFenced) {
				renewed <- err
				return
			}
		}
	}()
	defer stopRenew()
	b, fin, _ := rf.waitEnded(t, id)
	wantTimedOut(t, b, fin, "timed out after 200ms")
	if b.Agent != "" || fin.Agent != "agent-a" || b.FinishedAt.AsTime().Before(b.CreatedAt.AsTime().Add(200*time.Millisecond+lease)) {
		t.Fatalf("forced end: agent %q (event %q), ended %v after creation", b.Agent, fin.Agent, b.FinishedAt.AsTime().Sub(b.CreatedAt.AsTime()))
	}
	if a := b.Attempts[0]; a.Agent != "agent-a" || a.Reason != buildstore.ReasonTimedOut || a.EndedAt == nil {
		t.Fatalf("attempt = %v", a)
	}
	if err := <-renewed; !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("the agent's renewals after the forced end: %v, want fenced", err)
	}
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{ImageId: "sha256:late"}, ""); !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("the agent's late finish: %v, want fenced", err)
	}
	if got, _, _ := rf.store.Get(ctx, id); got.State != kilnv1.BuildState_BUILD_STATE_CANCELLED || got.Result.GetImageId() != "" {
		t.Fatalf("after the late finish: %s %v", got.State, got.Result)
	}
}

// TestTimeoutsSurviveFailover: a scheduler that takes over enforces the
// timeouts of the records its predecessor left: a queued build past its
// deadline is cancelled and never handed to the agent pulling meanwhile,
// and a running one past its deadline has its cancel requested.
func TestTimeoutsSurviveFailover(t *testing.T) {
	long := time.Now().Add(-time.Hour)
	queued := &kilnv1.Build{
		Id: buildstore.NewID(long), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED,
		Spec: &kilnv1.BuildSpec{Timeout: durationpb.New(time.Minute)}, CreatedAt: timestamppb.New(long), QueuedAt: timestamppb.New(long),
	}
	running := &kilnv1.Build{
		Id: buildstore.NewID(long.Add(time.Millisecond)), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_RUNNING,
		Spec: &kilnv1.BuildSpec{Timeout: durationpb.New(30 * time.Minute)}, CreatedAt: timestamppb.New(long),
		Agent: "agent-b", Attempt: 1, Attempts: []*kilnv1.BuildAttempt{{Attempt: 1, Agent: "agent-b", AssignedAt: timestamppb.New(long)}},
		LeaseExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
	}
	rf := timeoutFarm(t, time.Hour, queued, running)
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	pulled := make(chan []*kilnv1.Build, 1)
	go func() { // an agent asking for work all along
		got, _ := ca.Pull(t.Context(), 2*time.Second)
		pulled <- got
	}()
	b, fin, _ := rf.waitEnded(t, queued.Id)
	wantTimedOut(t, b, fin, "timed out after 1m0s")
	if b.Attempt != 0 {
		t.Fatalf("the timed-out queued build was assigned (attempt %d)", b.Attempt)
	}
	waitUntil(t, "the running build's cancel", func() bool {
		r, _, err := rf.store.Get(t.Context(), running.Id)
		return err == nil && r.CancelRequested && r.TimedOut && r.State == kilnv1.BuildState_BUILD_STATE_RUNNING
	})
	if got := <-pulled; len(got) != 0 {
		t.Fatalf("the agent was handed %v", got)
	}
}
