package agent

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestAdminDrainHoldsPullsAndUndrainResumes runs an agent on the real
// engine against a NATS server whose pull subject nobody answers (the
// pulls wait): a drain request is answered with a DRAINING record, the
// waiting pulls are withdrawn and no new one is offered; the process keeps
// running; undrain answers READY and the slots pull again. Stopping a
// drained agent still ends Run.
func TestAdminDrainHoldsPullsAndUndrainResumes(t *testing.T) {
	const name = "drain-test"
	conn := bustest.Conn(t)
	pulls := make(chan *nats.Msg, 16)
	withdrawals := make(chan *nats.Msg, 16)
	for subject, ch := range map[string]chan *nats.Msg{bus.PullSubject(name): pulls, bus.WithdrawSubject(name): withdrawals} {
		sub, err := conn.NC.ChanSubscribe(subject, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	a, err := New(t.Context(), Config{
		Name: name, Slots: 2, Engine: enginetest.Docker(t), Conn: conn, CacheDir: t.TempDir(),
		PollWait: time.Minute, HeartbeatEvery: time.Hour, DrainTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()

	deadline := time.After(2 * time.Minute)
	waitFor := func(ch <-chan *nats.Msg, what string) {
		t.Helper()
		select {
		case <-ch:
		case err := <-ran:
			t.Fatalf("Run returned (%v) while waiting for %s", err, what)
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
	agents, err := conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func() kilnv1.AgentState {
		t.Helper()
		e, err := agents.Get(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		rec := &kilnv1.Agent{}
		if err := bus.Decode(e.Value(), rec); err != nil {
			t.Fatal(err)
		}
		return rec.State
	}
	drain := func(undrain bool) *kilnv1.Agent {
		t.Helper()
		msg, err := bus.NewMsg(bus.DrainSubject(name), &kilnv1.DrainAgentRequest{Name: name, Undrain: undrain})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		reply, err := conn.NC.RequestMsgWithContext(rctx, msg)
		if err != nil {
			t.Fatalf("drain request (undrain %v): %v", undrain, err)
		}
		resp := &kilnv1.DrainAgentResponse{}
		if err := bus.Decode(reply.Data, resp); err != nil {
			t.Fatal(err)
		}
		return resp.Agent
	}

	waitFor(pulls, "first pull")
	waitFor(pulls, "second pull")
	if got := drain(false); got.GetState() != kilnv1.AgentState_AGENT_STATE_DRAINING || got.GetName() != name {
		t.Fatalf("drain answered %v, want %s DRAINING", got, name)
	}
	waitFor(withdrawals, "withdrawal of the waiting pulls")
	if s := heartbeat(); s != kilnv1.AgentState_AGENT_STATE_DRAINING {
		t.Fatalf("heartbeat %v after the drain, want DRAINING", s)
	}
	// Every pull started before the drain returned before the answer was
	// sent on the same connection, so any of them is already here.
	if n := len(pulls); n != 0 {
		t.Fatalf("%d pulls offered by a drained agent", n)
	}
	select {
	case err := <-ran:
		t.Fatalf("Run returned (%v) on a drain: the agent must stay up", err)
	default:
	}
	if got := drain(false); got.GetState() != kilnv1.AgentState_AGENT_STATE_DRAINING {
		t.Fatalf("second drain answered %v, want DRAINING", got)
	}

	if got := drain(true); got.GetState() != kilnv1.AgentState_AGENT_STATE_READY {
		t.Fatalf("undrain answered %v, want READY", got)
	}
	if s := heartbeat(); s != kilnv1.AgentState_AGENT_STATE_READY {
		t.Fatalf("heartbeat %v after the undrain, want READY", s)
	}
	waitFor(pulls, "a pull after the undrain")
	waitFor(pulls, "the second slot's pull after the undrain")

	// Stopping a drained agent: its held slots end and Run returns.
	drain(false)
	stop()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-deadline:
		t.Fatal("Run of a drained agent did not return after its context ended")
	}
}
