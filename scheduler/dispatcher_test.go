package scheduler

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestDispatcherExpectsWhenAgentsFreeSlots checks the bookkeeping behind
// routing.Agent.NextFree and the lineages' costs: what each agent runs and
// when that is expected to end, slots freed by a pull before the build's
// end is seen, and a build's end learnt as the time it held its slot.
func TestDispatcherExpectsWhenAgentsFreeSlots(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	d := newDispatcher(dispatchDeps{now: clk.Now})
	t0 := clk.Now()
	running := func(agent, id string, start time.Time, run time.Duration) {
		d.leased[id] = lease{tenant: "t", agent: agent}
		d.started[id] = start
		r := runningBuild{id: id, start: start}
		if run > 0 {
			r.end = start.Add(run)
		}
		d.onAgent[agent] = append(d.onAgent[agent], r)
	}
	d.apply(event{agent: &kilnv1.Agent{Name: "one", Slots: 1}})
	d.apply(event{agent: &kilnv1.Agent{Name: "two", Slots: 2}})

	running("one", "b1", t0, 3*time.Second)
	if got := d.nextFree("one"); !got.Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("one runs b1 until t0+3s: NextFree %v", got)
	}
	// b1 ends at t0+4s (the build watch saw it) before the agent pulls:
	// its slot is free from then on, and b1 held it 4s.
	clk.Advance(4 * time.Second)
	d.apply(event{released: "b1", ended: &kilnv1.Build{
		Id: "b1", State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED,
		Affinity: &kilnv1.Affinity{Lineage: "L"}, Result: &kilnv1.BuildResult{Steps: 2, CachedSteps: 1},
		StartedAt: timestamppb.New(t0), FinishedAt: timestamppb.New(t0.Add(time.Second)),
	}})
	if got := d.nextFree("one"); !got.Equal(t0.Add(4 * time.Second)) {
		t.Fatalf("one's build ended at t0+4s, its pull not seen yet: NextFree %v", got)
	}
	if warm, _ := d.costs.of("L"); warm != 4*time.Second {
		t.Fatalf("b1 held its slot 4s, warm cost learnt %v", warm)
	}

	// two runs b2 (expected till t0+6s) and b3 (end not known): not known.
	running("two", "b2", t0, 6*time.Second)
	running("two", "b3", t0.Add(time.Second), 0)
	if got := d.nextFree("two"); !got.IsZero() {
		t.Fatalf("two runs a build of unknown length: NextFree %v, want not known", got)
	}
	// A pull from two before any end is seen: the build assigned first
	// (b2) has ended.
	d.apply(event{pull: &pull{agent: "two", deadline: clk.Now().Add(time.Minute)}})
	if rs := d.onAgent["two"]; len(rs) != 1 || rs[0].id != "b3" {
		t.Fatalf("after two's pull it runs %v, want b3 alone", rs)
	}
	if _, ok := d.leased["b2"]; !ok {
		t.Fatal("b2's lease dropped before the sweeper or the watch saw its end")
	}
}

// TestDispatcherDropsAgentsWhoseHeartbeatWentStale checks that the router's
// index loses an agent once its heartbeat is agentTTL old, though no event
// about that agent arrives (the dispatcher looks for stale heartbeats only
// when the first may have gone stale), and keeps the agents that
// heartbeat meanwhile.
func TestDispatcherDropsAgentsWhoseHeartbeatWentStale(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	d := newDispatcher(dispatchDeps{now: clk.Now})
	heartbeat := func(name string) {
		d.apply(event{agent: &kilnv1.Agent{Name: name, Slots: 1, State: kilnv1.AgentState_AGENT_STATE_READY, LastSeen: timestamppb.New(clk.Now())}})
	}
	indexed := func(want ...string) {
		t.Helper()
		d.refreshIndex(clk.Now())
		if len(d.indexed) != len(want) {
			t.Fatalf("indexed %v, want %v", d.indexed, want)
		}
		for _, name := range want {
			if !d.indexed[name] {
				t.Fatalf("indexed %v, want %v", d.indexed, want)
			}
		}
	}
	heartbeat("old")
	heartbeat("fresh")
	indexed("old", "fresh")
	clk.Advance(d.agentTTL / 2)
	heartbeat("fresh")
	indexed("old", "fresh")
	clk.Advance(d.agentTTL / 2) // old's heartbeat is agentTTL old
	indexed("fresh")
	clk.Advance(d.agentTTL / 2)
	indexed()
	heartbeat("old") // back
	indexed("old")
}

// TestDispatcherAnswersExpiredPullsOnly checks the expiry of waiting
// pulls, which the dispatcher finds by deadline (expiry heap): an expired
// pull is answered empty, one still waiting is kept (and sets when to look
// next), and a pull that arrives already expired after a look is answered
// at the next dispatch.
func TestDispatcherAnswersExpiredPullsOnly(t *testing.T) {
	conn := bustest.Conn(t)
	d := newDispatcher(dispatchDeps{nc: conn.NC, now: time.Now, log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	answers := make(chan *nats.Msg, 8)
	sub, err := conn.NC.ChanSubscribe("answers.>", answers)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	expectAnswer := func(want string) {
		t.Helper()
		if err := conn.NC.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-answers:
			wa := &kilnv1.WorkAssignment{}
			if err := bus.Decode(m.Data, wa); err != nil || m.Subject != want || len(wa.Builds) != 0 {
				t.Fatalf("answer on %s with %v (%v), want an empty one on %s", m.Subject, wa, err, want)
			}
		case <-t.Context().Done():
			t.Fatalf("no answer on %s", want)
		}
	}
	now := time.Now()
	d.apply(event{pull: &pull{agent: "a", reply: "answers.expired", deadline: now.Add(-time.Second)}})
	d.apply(event{pull: &pull{agent: "b", reply: "answers.waiting", deadline: now.Add(time.Hour)}})
	next := d.dispatch(t.Context())
	expectAnswer("answers.expired")
	if next <= 0 || next > time.Hour {
		t.Fatalf("next dispatch in %v, want b's deadline, within the hour", next)
	}
	if len(d.pulls["a"]) != 0 || len(d.pulls["b"]) != 1 {
		t.Fatalf("pulls left %v, want b's alone", d.pulls)
	}
	d.apply(event{pull: &pull{agent: "c", reply: "answers.late", deadline: now.Add(-time.Second)}})
	d.dispatch(t.Context())
	expectAnswer("answers.late")
	if len(d.pulls["c"]) != 0 || len(d.pulls["b"]) != 1 {
		t.Fatalf("pulls left %v, want b's alone", d.pulls)
	}
	// Withdrawn and lost pulls leave the deadline heap too; expiring
	// pulls among several of one agent keeps the others, in order.
	d.apply(event{withdraw: "b"})
	for i, wait := range []time.Duration{time.Hour, -time.Second, 2 * time.Hour} {
		d.apply(event{pull: &pull{agent: "x", reply: fmt.Sprint("answers.x", i), deadline: now.Add(wait)}})
	}
	d.dispatch(t.Context())
	expectAnswer("answers.x1")
	if ps := d.pulls["x"]; len(ps) != 2 || ps[0].reply != "answers.x0" || ps[1].reply != "answers.x2" || len(d.expiry) != 2 {
		t.Fatalf("x's pulls %v, heap %d, want x0 and x2 in both", ps, len(d.expiry))
	}
	d.apply(event{lost: "x"})
	if len(d.pulls) != 0 || len(d.expiry) != 0 {
		t.Fatalf("pulls %v, heap %d after the withdrawal and the loss, want none", d.pulls, len(d.expiry))
	}
	if err := conn.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-answers:
		t.Fatalf("unexpected answer on %s", m.Subject)
	default:
	}
}
