package agentproto_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestWorkerPullsHeartbeatsHoldsAndDrains runs a Worker with an agent's
// credential against a NATS server where the test answers the pulls as
// the scheduler would: each slot offers itself, a handed build runs while
// the heartbeat counts it busy, an admin's hold cancels the waiting pull
// and says DRAINING until released, and stopping withdraws the pulls,
// gives the running build DrainTimeout, ends it with ErrDrained and
// deletes the heartbeat.
func TestWorkerPullsHeartbeatsHoldsAndDrains(t *testing.T) {
	const name = "worker-1"
	farm := bustest.AuthFarm(t, name)
	sched := farm.Conn(t, bus.RoleScheduler, "")
	agentConn := farm.Conn(t, bus.RoleAgent, name)
	pulls := make(chan *nats.Msg, 16)
	withdrawals := make(chan *nats.Msg, 16)
	for subject, ch := range map[string]chan *nats.Msg{bus.PullSubject(name): pulls, bus.WithdrawSubject(name): withdrawals} {
		sub, err := sched.NC.ChanSubscribe(subject, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	ctx := t.Context()
	agentsKV, err := agentConn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	schedKV, err := sched.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	client, err := agentproto.New(agentConn.NC, name)
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		id   string
		work context.Context
	}
	running := make(chan run, 4)
	release := make(chan struct{})
	w := &agentproto.Worker{
		Client: client, Agents: agentsKV, Slots: 2, PollWait: time.Minute, HeartbeatEvery: time.Hour,
		DrainTimeout: 100 * time.Millisecond,
		Build: func(work context.Context, b *kilnv1.Build) {
			running <- run{b.Id, work}
			if b.Id != "b1" {
				<-work.Done() // only b1 finishes; the others run until drained
				return
			}
			select {
			case <-release:
			case <-work.Done():
			}
		},
		Record: func() *kilnv1.Agent {
			return &kilnv1.Agent{State: kilnv1.AgentState_AGENT_STATE_READY, EngineVersion: "test"}
		},
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	record := func() *kilnv1.Agent {
		t.Helper()
		e, err := schedKV.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		a := &kilnv1.Agent{}
		if err := bus.Decode(e.Value(), a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	answer := func(m *nats.Msg, id string) {
		t.Helper()
		reply, err := bus.NewMsg(m.Reply, &kilnv1.WorkAssignment{Builds: []*kilnv1.Build{{Id: id}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.RespondMsg(reply); err != nil {
			t.Fatal(err)
		}
	}
	nextPull := func() *nats.Msg {
		t.Helper()
		select {
		case m := <-pulls:
			offer := &kilnv1.WorkOffer{}
			if err := bus.Decode(m.Data, offer); err != nil || offer.Agent != name || offer.FreeSlots != 1 {
				t.Fatalf("work offer %v (%v), want one slot of %s", offer, err, name)
			}
			return m
		case <-ctx.Done():
			t.Fatal("no pull")
			return nil
		}
	}

	if _, err := w.Heartbeat(ctx); err != nil {
		t.Fatalf("heartbeat with the agent's own credential: %v", err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(wctx) }()
	t.Cleanup(func() { stop(); <-done })

	first, second := nextPull(), nextPull() // one per slot
	answer(first, "b1")
	if r := <-running; r.id != "b1" {
		t.Fatalf("ran %s, want b1", r.id)
	}
	if _, err := w.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if a := record(); a.Name != name || a.Slots != 2 || a.BusySlots != 1 || a.State != kilnv1.AgentState_AGENT_STATE_READY || a.EngineVersion != "test" {
		t.Fatalf("heartbeat %v, want %s READY with 1 of 2 slots busy and the caller's engine", a, name)
	}

	// The hold cancels the waiting pull (Hold returns once it has
	// returned) and the record says DRAINING; released, the slot pulls.
	w.Hold(true)
	if _, err := w.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if a := record(); a.State != kilnv1.AgentState_AGENT_STATE_DRAINING {
		t.Fatalf("held: heartbeat %v, want DRAINING", a.State)
	}
	answer(second, "late") // the pull was cancelled: nobody runs this
	w.Hold(false)
	third := nextPull()
	close(release) // b1 ends: its slot pulls again
	fourth := nextPull()
	answer(third, "b2")
	r := <-running
	if r.id != "b2" {
		t.Fatalf("ran %s, want b2 (the answer to a cancelled pull must not run)", r.id)
	}
	_ = fourth

	// Stop: the waiting pull is withdrawn; b2, still running, ends
	// drained once DrainTimeout has passed.
	stop()
	select {
	case <-withdrawals:
	case <-ctx.Done():
		t.Fatal("no withdrawal on stop")
	}
	<-done
	if cause := context.Cause(r.work); !errors.Is(cause, agentproto.ErrDrained) {
		t.Fatalf("b2's work ended with %v", cause)
	}
	if _, err := schedKV.Get(ctx, name); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("heartbeat after Run returned: %v, want deleted", err)
	}
}
