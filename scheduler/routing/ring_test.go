package routing

import (
	"fmt"
	"math"
	"testing"
)

func idleAgents(n, free int) []Agent {
	agents := make([]Agent, n)
	for i := range agents {
		agents[i] = Agent{Name: fmt.Sprintf("agent-%03d", i), FreeSlots: free, Slots: free}
	}
	return agents
}

// homes routes one fresh build per lineage, each alone, and returns where
// each lineage went.
func homes(agents []Agent, lineages int) []string {
	x := NewIndex(agents)
	out := make([]string, lineages)
	for l := range out {
		b := Build{ID: "b", Tenant: "t", Lineage: fmt.Sprint("lineage-", l), QueuedAt: t0}
		as := x.Decide(Config{}, []Build{b}, nil, t0).Assignments
		if len(as) != 1 || as[0].Reason != Hashed {
			panic(fmt.Sprint("not hashed: ", as))
		}
		out[l] = as[0].Agent
	}
	return out
}

func TestConsistentHashing(t *testing.T) {
	const lineages = 5000
	t.Run("same lineage, same agent, across calls and agent orders", func(t *testing.T) {
		agents := idleAgents(10, 1)
		first := homes(agents, 200)
		agents[0], agents[9], agents[3], agents[5] = agents[9], agents[0], agents[5], agents[3]
		for l, h := range homes(agents, 200) {
			if h != first[l] {
				t.Fatalf("lineage %d: %s, then %s", l, first[l], h)
			}
		}
	})
	t.Run("balanced", func(t *testing.T) {
		count := map[string]int{}
		for _, h := range homes(idleAgents(10, 1), lineages) {
			count[h]++
		}
		for name, n := range count {
			if math.Abs(float64(n)-lineages/10) > 0.35*lineages/10 {
				t.Errorf("%s holds %d of %d lineages, want about %d", name, n, lineages, lineages/10)
			}
		}
	})
	t.Run("adding an agent moves lineages only to it", func(t *testing.T) {
		before := homes(idleAgents(10, 1), lineages)
		after := homes(idleAgents(11, 1), lineages)
		moved := 0
		for l := range before {
			if before[l] != after[l] {
				moved++
				if after[l] != "agent-010" {
					t.Errorf("lineage %d moved from %s to %s, not to the new agent", l, before[l], after[l])
				}
			}
		}
		if want := lineages / 11; moved < want/2 || moved > 2*want {
			t.Errorf("%d of %d lineages moved, want about %d", moved, lineages, want)
		}
	})
	t.Run("removing an agent moves only its lineages", func(t *testing.T) {
		before := homes(idleAgents(10, 1), lineages)
		x := NewIndex(idleAgents(10, 1))
		x.Remove("agent-004")
		for l := range before {
			b := Build{ID: "b", Tenant: "t", Lineage: fmt.Sprint("lineage-", l), QueuedAt: t0}
			got := x.Decide(Config{}, []Build{b}, nil, t0).Assignments[0].Agent
			if before[l] != "agent-004" && got != before[l] {
				t.Errorf("lineage %d moved from %s to %s", l, before[l], got)
			}
		}
	})
}

func TestBoundedLoads(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       float64
		builds  int
		running int
		maxLoad int
	}{
		// 40 builds of one lineage over 4 idle agents: at most
		// ceil(1.25·40/4) = 13 on any, where plain hashing would put all 40
		// on one.
		{name: "c=1.25 spreads a hot lineage", c: 1.25, builds: 40, maxLoad: 13},
		{name: "c=1 balances exactly", c: 1, builds: 40, maxLoad: 10},
		{name: "large c keeps a lineage together", c: 100, builds: 40, maxLoad: 40},
		// Already running builds count: 4 running each plus 8 new over 4
		// agents: at most ceil(1.25·24/4) = 8 each.
		{name: "running builds count", c: 1.25, builds: 8, running: 4, maxLoad: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agents := idleAgents(4, 100)
			for i := range agents {
				agents[i].Running = tc.running
			}
			queue := make([]Build, tc.builds)
			for i := range queue {
				queue[i] = Build{ID: fmt.Sprintf("b%02d", i), Tenant: "t", Lineage: "hot", QueuedAt: t0}
			}
			as := Route(Config{LoadFactor: tc.c}, queue, agents, nil, t0)
			if len(as) != tc.builds {
				t.Fatalf("%d assigned, want %d", len(as), tc.builds)
			}
			load := map[string]int{}
			biggest := 0
			for _, a := range as {
				if a.Reason != Hashed {
					t.Errorf("%s: %v, want hashed", a.Build, a.Reason)
				}
				load[a.Agent]++
				biggest = max(biggest, load[a.Agent]+tc.running)
			}
			if biggest != tc.maxLoad {
				t.Errorf("busiest agent has %d, want %d (loads %v)", biggest, tc.maxLoad, load)
			}
		})
	}
}
