package scheduler

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
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
