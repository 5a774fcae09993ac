package routing

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// summary renders assignments as "build→agent reason" for comparison.
func summary(as []Assignment) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s→%s %s", a.Build, a.Agent, a.Reason))
	}
	return out
}

func chain(prefix string, n int) []string {
	c := make([]string, n)
	for i := range c {
		c[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return c
}

func nextFree(a Agent, at time.Time) Agent { a.NextFree = at; return a }

func TestRoute(t *testing.T) {
	lin := Build{ID: "b1", Tenant: "t", Lineage: "L", BaseImages: []string{"golang:1.26"}, Chain: chain("c", 6), QueuedAt: t0}
	with := func(b Build, f func(*Build)) Build { f(&b); return b }
	free := func(name string, n int) Agent { return Agent{Name: name, FreeSlots: n, Slots: 2} }
	busy := func(name string) Agent { return Agent{Name: name, Slots: 2, Running: 2} }
	holds := func(a Agent, chains []string, lineages ...string) Agent {
		a.Chains, a.Lineages = chains, lineages
		return a
	}
	for _, tc := range []struct {
		name     string
		cfg      Config
		queue    []Build
		agents   []Agent
		running  map[string]int
		now      time.Time
		want     []string
		wantWake time.Time
	}{
		{
			name:   "affinity to the agent holding the chain",
			queue:  []Build{lin},
			agents: []Agent{free("a", 1), holds(free("b", 1), chain("c", 4)), free("c", 1)},
			now:    t0,
			want:   []string{"b1→b affinity"},
		},
		{
			name:   "longest prefix wins even if the summary dropped shorter ones",
			queue:  []Build{lin},
			agents: []Agent{holds(free("a", 1), []string{"c0"}), holds(free("b", 1), []string{"c2"})},
			now:    t0,
			want:   []string{"b1→b affinity"},
		},
		{
			name:   "lineage breaks a tie between equal chains",
			queue:  []Build{lin},
			agents: []Agent{holds(free("a", 1), chain("c", 3)), holds(free("b", 1), chain("c", 3), "L")},
			now:    t0,
			want:   []string{"b1→b affinity"},
		},
		{
			name:  "base image breaks a tie",
			queue: []Build{lin},
			agents: []Agent{holds(free("a", 1), chain("c", 3)),
				{Name: "b", FreeSlots: 1, Chains: chain("c", 3), BaseImages: []string{"debian:12", "golang:1.26"}}},
			now:  t0,
			want: []string{"b1→b affinity"},
		},
		{
			name:   "equal scores: fewer running first",
			queue:  []Build{lin},
			agents: []Agent{{Name: "a", FreeSlots: 1, Running: 1, Lineages: []string{"L"}}, {Name: "b", FreeSlots: 1, Running: 0, Lineages: []string{"L"}}},
			now:    t0,
			want:   []string{"b1→b affinity"},
		},
		{
			name:   "equal scores and load: name first",
			queue:  []Build{lin},
			agents: []Agent{{Name: "b", FreeSlots: 1, Lineages: []string{"L"}}, {Name: "a", FreeSlots: 1, Lineages: []string{"L"}}},
			now:    t0,
			want:   []string{"b1→a affinity"},
		},
		{
			name:   "builds assigned in this call count as load",
			queue:  []Build{lin, with(lin, func(b *Build) { b.ID = "b2" })},
			agents: []Agent{{Name: "a", FreeSlots: 2, Lineages: []string{"L"}}, {Name: "b", FreeSlots: 2, Lineages: []string{"L"}}},
			now:    t0,
			want:   []string{"b1→a affinity", "b2→b affinity"},
		},
		{
			name:     "preferred agent busy: held until QueuedAt+Delay",
			queue:    []Build{lin},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("c", 2))},
			now:      t0.Add(2*time.Second - time.Nanosecond),
			want:     []string{},
			wantWake: t0.Add(2 * time.Second),
		},
		{
			name:   "preferred agent busy: spills at exactly QueuedAt+Delay to the next best",
			queue:  []Build{lin},
			agents: []Agent{holds(busy("a"), chain("c", 6)), free("c", 1), holds(free("b", 1), chain("c", 2))},
			now:    t0.Add(2 * time.Second),
			want:   []string{"b1→b spilled"},
		},
		{
			name:   "spill with no other history goes to the least loaded free agent",
			queue:  []Build{lin},
			agents: []Agent{holds(busy("a"), chain("c", 6)), {Name: "c", FreeSlots: 1, Running: 1}, free("d", 1)},
			now:    t0.Add(time.Hour),
			want:   []string{"b1→d spilled"},
		},
		{
			name:     "configured delay",
			cfg:      Config{Delay: 10 * time.Second},
			queue:    []Build{lin},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:      t0.Add(9 * time.Second),
			want:     []string{},
			wantWake: t0.Add(10 * time.Second),
		},
		{
			name:   "negative delay spills at once",
			cfg:    Config{Delay: -1},
			queue:  []Build{lin},
			agents: []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:    t0,
			want:   []string{"b1→b spilled"},
		},
		{
			name:   "one of two best agents busy: the free one, no wait",
			queue:  []Build{lin},
			agents: []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("c", 6))},
			now:    t0,
			want:   []string{"b1→b affinity"},
		},
		{
			name:  "labels: the holder lacks a required label",
			queue: []Build{with(lin, func(b *Build) { b.Labels = map[string]string{"arch": "arm64"} })},
			agents: []Agent{holds(free("a", 1), chain("c", 6)),
				{Name: "b", FreeSlots: 1, Labels: map[string]string{"arch": "arm64", "os": "linux"}, Chains: chain("c", 1)},
				{Name: "c", FreeSlots: 1, Labels: map[string]string{"arch": "amd64"}, Chains: chain("c", 6)}},
			now:  t0,
			want: []string{"b1→b affinity"},
		},
		{
			name:   "labels: no eligible agent free, no wake",
			queue:  []Build{with(lin, func(b *Build) { b.Labels = map[string]string{"gpu": "true"} })},
			agents: []Agent{free("a", 1), {Name: "g", Labels: map[string]string{"gpu": "true"}, Running: 1}},
			now:    t0,
			want:   []string{},
		},
		{
			name:   "labels: an empty required value must be present",
			queue:  []Build{with(lin, func(b *Build) { b.Labels = map[string]string{"x": ""} })},
			agents: []Agent{free("a", 1), {Name: "b", FreeSlots: 1, Labels: map[string]string{"x": ""}}},
			now:    t0.Add(time.Hour),
			want:   []string{"b1→b hashed"},
		},
		{
			name:   "no history: hashed",
			queue:  []Build{with(lin, func(b *Build) { b.Lineage = "fresh6" })},
			agents: []Agent{free("a", 1), free("b", 1), free("c", 1)},
			now:    t0,
			want:   []string{"b1→b hashed"},
		},
		{
			name:   "no history: hashed-to agent busy, the next free agent on its ring at once",
			queue:  []Build{with(lin, func(b *Build) { b.Lineage = "fresh6" })},
			agents: []Agent{free("a", 1), {Name: "b", Slots: 1}, free("c", 1)},
			now:    t0,
			want:   []string{"b1→a hashed"},
		},
		{
			name:   "no history: bounded loads pass a free agent with too many builds",
			queue:  []Build{with(lin, func(b *Build) { b.Lineage = "fresh6" })},
			agents: []Agent{free("a", 1), {Name: "b", FreeSlots: 1, Slots: 4, Running: 3}, free("c", 1)},
			now:    t0,
			want:   []string{"b1→a hashed"},
		},
		{
			name:     "history says wait: held past the delay while the preferred agent frees a slot before a miss would pay off",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents:   []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(4*time.Second)), free("b", 1)},
			now:      t0.Add(3 * time.Second),
			want:     []string{},
			wantWake: t0.Add(7 * time.Second), // a's estimate is trusted until it overruns by a miss's cost
		},
		{
			name:     "history says wait, estimate overrun by more than a miss: not trusted, held as long as a miss costs",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents:   []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(-time.Second)), free("b", 1)},
			now:      t0.Add(2 * time.Second),
			want:     []string{},
			wantWake: t0.Add(3 * time.Second),
		},
		{
			name:   "history says wait, estimate not trusted: spills once it waited as long as a miss costs",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents: []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(-time.Second)), free("b", 1)},
			now:    t0.Add(3 * time.Second),
			want:   []string{"b1→b spilled"},
		},
		{
			name:     "history says wait, wait not known (no NextFree): held as long as a miss costs",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:      t0.Add(2 * time.Second),
			want:     []string{},
			wantWake: t0.Add(3 * time.Second),
		},
		{
			name:     "a miss cheaper than the delay: the delay decides",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 2500*time.Millisecond })},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:      t0.Add(time.Second),
			want:     []string{},
			wantWake: t0.Add(2 * time.Second),
		},
		{
			name:   "waiting would cost more than a miss: spills before the delay",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents: []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(5*time.Second)), free("b", 1)},
			now:    t0.Add(100 * time.Millisecond),
			want:   []string{"b1→b spilled"},
		},
		{
			name:   "no miss where it would spill (it holds the lineage too): spills at once",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents: []Agent{holds(busy("a"), chain("c", 6), "L"), holds(free("b", 1), chain("c", 2))},
			now:    t0,
			want:   []string{"b1→b spilled"},
		},
		{
			name:   "no miss anywhere (warm as fast as cold): spills at once",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, time.Second })},
			agents: []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:    t0,
			want:   []string{"b1→b spilled"},
		},
		{
			name:     "registry cache: waiting 3s for the warm agent is worth it against a 3s miss…",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents:   []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(3*time.Second)), free("b", 1)},
			now:      t0,
			want:     []string{},
			wantWake: t0.Add(6 * time.Second),
		},
		{
			name:   "… but not against a 1.5s miss when a cold agent imports the registry cache: spills at once",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold, b.ColdCached = time.Second, 4*time.Second, 2500*time.Millisecond })},
			agents: []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(3*time.Second)), free("b", 1)},
			now:    t0,
			want:   []string{"b1→b spilled"},
		},
		{
			name:     "registry cache, no NextFree: held only as long as the cheaper miss costs",
			queue:    []Build{with(lin, func(b *Build) { b.Warm, b.Cold, b.ColdCached = time.Second, 8*time.Second, 3500*time.Millisecond })},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:      t0.Add(time.Second),
			want:     []string{},
			wantWake: t0.Add(2500 * time.Millisecond),
		},
		{
			name:   "registry cache, no NextFree: spills once it waited as long as the cheaper miss costs",
			queue:  []Build{with(lin, func(b *Build) { b.Warm, b.Cold, b.ColdCached = time.Second, 8*time.Second, 3500*time.Millisecond })},
			agents: []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:    t0.Add(2500 * time.Millisecond),
			want:   []string{"b1→b spilled"},
		},
		{
			name:     "only one of Warm and Cold known: the delay decides",
			queue:    []Build{with(lin, func(b *Build) { b.Cold = 4 * time.Second })},
			agents:   []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(time.Hour)), free("b", 1)},
			now:      t0.Add(time.Second),
			want:     []string{},
			wantWake: t0.Add(2 * time.Second),
		},
		{
			name: "builds held for an agent make the next one wait longer",
			queue: []Build{
				with(lin, func(b *Build) { b.Warm, b.Cold = 1500*time.Millisecond, 4*time.Second }),
				with(lin, func(b *Build) { b.ID, b.Warm, b.Cold = "b2", 1500*time.Millisecond, 4*time.Second }),
			},
			agents:   []Agent{nextFree(holds(busy("a"), chain("c", 6)), t0.Add(2*time.Second)), free("b", 1)},
			now:      t0,
			want:     []string{"b2→b spilled"}, // b1 waits 2s, b2 3.5s; a miss costs 2.5s
			wantWake: t0.Add(4500 * time.Millisecond),
		},
		{
			name: "locality first: a spill does not take the slot a younger build's cache is on",
			queue: []Build{
				with(lin, func(b *Build) { b.ID, b.QueuedAt = "old", t0.Add(-3*time.Second) }),
				{ID: "young", Tenant: "t", Lineage: "M", Chain: chain("m", 3), QueuedAt: t0},
			},
			agents: []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("m", 3))},
			now:    t0,
			want:   []string{"young→b affinity"},
		},
		{
			name: "locality first: what is left is spilled onto",
			queue: []Build{
				with(lin, func(b *Build) { b.ID, b.QueuedAt = "old", t0.Add(-3*time.Second) }),
				{ID: "young", Tenant: "t", Lineage: "M", Chain: chain("m", 3), QueuedAt: t0},
			},
			agents: []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("m", 3)), free("c", 1)},
			now:    t0,
			want:   []string{"young→b affinity", "old→c spilled"},
		},
		{
			name: "locality first, but not for a build that waited twice its delay",
			queue: []Build{
				with(lin, func(b *Build) { b.ID, b.QueuedAt = "old", t0.Add(-4*time.Second) }),
				{ID: "young", Tenant: "t", Lineage: "M", Chain: chain("m", 3), QueuedAt: t0},
			},
			agents: []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("m", 3))},
			now:    t0,
			want:   []string{"old→b spilled"},
		},
		{
			name: "locality first looks only so far past a build set aside",
			queue: func() []Build {
				q := []Build{with(lin, func(b *Build) { b.ID, b.QueuedAt = "old", t0.Add(-3*time.Second) })}
				for i := range lookaheadPerSlot + lookaheadMin { // held for busy a
					q = append(q, with(lin, func(b *Build) { b.ID, b.QueuedAt = fmt.Sprintf("mid%02d", i), t0.Add(time.Duration(i)) }))
				}
				return append(q, Build{ID: "young", Tenant: "t", Lineage: "M", Chain: chain("m", 3), QueuedAt: t0.Add(time.Second)})
			}(),
			agents: []Agent{holds(busy("a"), chain("c", 6)), holds(free("b", 1), chain("m", 3))},
			now:    t0.Add(time.Second),
			want:   []string{"old→b spilled"}, // young was not looked at
		},
		{
			name:  "several busy preferred agents: the one expected to free first decides",
			queue: []Build{with(lin, func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second })},
			agents: []Agent{
				nextFree(holds(busy("a"), chain("c", 6)), t0.Add(time.Hour)),
				nextFree(holds(busy("c"), chain("c", 6)), t0.Add(time.Second)),
				free("b", 1),
			},
			now:      t0,
			want:     []string{},
			wantWake: t0.Add(4 * time.Second),
		},
		{
			name: "priority first, then older, then ID",
			queue: []Build{
				{ID: "low", Tenant: "t", Priority: 0, QueuedAt: t0.Add(-time.Hour)},
				{ID: "high-new", Tenant: "t", Priority: 5, QueuedAt: t0},
				{ID: "high-old", Tenant: "t", Priority: 5, QueuedAt: t0.Add(-time.Minute)},
				{ID: "high-new-a", Tenant: "t", Priority: 5, QueuedAt: t0},
			},
			agents: []Agent{{Name: "a", FreeSlots: 3, Slots: 3}},
			now:    t0.Add(time.Hour),
			want:   []string{"high-old→a hashed", "high-new→a hashed", "high-new-a→a hashed"},
		},
		{
			name: "a held build does not block the tenant's next one",
			queue: []Build{
				with(lin, func(b *Build) { b.ID = "held"; b.Priority = 9 }),
				{ID: "next", Tenant: "t", Lineage: "other", QueuedAt: t0},
			},
			agents:   []Agent{holds(busy("a"), chain("c", 6)), free("b", 1)},
			now:      t0,
			want:     []string{"next→b hashed"},
			wantWake: t0.Add(2 * time.Second),
		},
		{
			name:   "never more than an agent's free slots",
			queue:  []Build{lin, with(lin, func(b *Build) { b.ID = "b2" }), with(lin, func(b *Build) { b.ID = "b3" })},
			agents: []Agent{holds(free("a", 2), chain("c", 6)), free("z", 0)},
			now:    t0,
			want:   []string{"b1→a affinity", "b2→a affinity"},
			// b3 is held for a (the only agent, busy now) but nothing is free to spill to
		},
		{
			name: "tenant cap",
			cfg:  Config{TenantCaps: map[string]int{"t": 2}},
			queue: []Build{
				{ID: "1", Tenant: "t", QueuedAt: t0}, {ID: "2", Tenant: "t", QueuedAt: t0}, {ID: "3", Tenant: "t", QueuedAt: t0},
				{ID: "4", Tenant: "u", QueuedAt: t0},
			},
			agents:  []Agent{{Name: "a", FreeSlots: 10}},
			running: map[string]int{"t": 1},
			now:     t0,
			want:    []string{"4→a hashed", "1→a hashed"},
		},
		{
			name:    "default cap; a tenant already at it gets nothing",
			cfg:     Config{DefaultCap: 1, TenantCaps: map[string]int{"u": 3}},
			queue:   []Build{{ID: "1", Tenant: "t", QueuedAt: t0}, {ID: "2", Tenant: "u", QueuedAt: t0}, {ID: "3", Tenant: "u", QueuedAt: t0}},
			agents:  []Agent{{Name: "a", FreeSlots: 10}},
			running: map[string]int{"t": 1, "u": 1},
			now:     t0,
			want:    []string{"2→a hashed", "3→a hashed"},
		},
		{
			name: "weighted round-robin 2:1",
			cfg:  Config{TenantWeights: map[string]int{"big": 2}},
			queue: []Build{
				{ID: "b1", Tenant: "big", QueuedAt: t0}, {ID: "b2", Tenant: "big", QueuedAt: t0}, {ID: "b3", Tenant: "big", QueuedAt: t0},
				{ID: "b4", Tenant: "big", QueuedAt: t0}, {ID: "b5", Tenant: "big", QueuedAt: t0},
				{ID: "s1", Tenant: "small", QueuedAt: t0}, {ID: "s2", Tenant: "small", QueuedAt: t0}, {ID: "s3", Tenant: "small", QueuedAt: t0},
			},
			agents: []Agent{{Name: "a", FreeSlots: 6}},
			now:    t0,
			want:   []string{"b1→a hashed", "s1→a hashed", "b2→a hashed", "b3→a hashed", "s2→a hashed", "b4→a hashed"},
		},
		{
			name: "the tenant's policy in its records wins over the weight flags",
			cfg:  Config{TenantWeights: map[string]int{"big": 1, "small": 1}},
			queue: []Build{
				{ID: "b1", Tenant: "big", QueuedAt: t0, Weight: 2}, {ID: "b2", Tenant: "big", QueuedAt: t0, Weight: 2}, {ID: "b3", Tenant: "big", QueuedAt: t0, Weight: 2},
				{ID: "b4", Tenant: "big", QueuedAt: t0, Weight: 2}, {ID: "b5", Tenant: "big", QueuedAt: t0, Weight: 2},
				{ID: "s1", Tenant: "small", QueuedAt: t0}, {ID: "s2", Tenant: "small", QueuedAt: t0}, {ID: "s3", Tenant: "small", QueuedAt: t0},
			},
			agents: []Agent{{Name: "a", FreeSlots: 6}},
			now:    t0,
			want:   []string{"b1→a hashed", "s1→a hashed", "b2→a hashed", "b3→a hashed", "s2→a hashed", "b4→a hashed"},
		},
		{
			name: "the tenant's policy cap in its records wins over the cap flags",
			cfg:  Config{DefaultCap: 10, TenantCaps: map[string]int{"t": 10}},
			queue: []Build{
				{ID: "1", Tenant: "t", QueuedAt: t0, MaxConcurrent: 2}, {ID: "2", Tenant: "t", QueuedAt: t0, MaxConcurrent: 2}, {ID: "3", Tenant: "t", QueuedAt: t0, MaxConcurrent: 2},
				{ID: "4", Tenant: "u", QueuedAt: t0},
			},
			agents:  []Agent{{Name: "a", FreeSlots: 10}},
			running: map[string]int{"t": 1},
			now:     t0,
			want:    []string{"4→a hashed", "1→a hashed"},
		},
		{
			name:    "round-robin counts what already runs",
			queue:   []Build{{ID: "t1", Tenant: "t", QueuedAt: t0}, {ID: "u1", Tenant: "u", QueuedAt: t0}, {ID: "u2", Tenant: "u", QueuedAt: t0}},
			agents:  []Agent{{Name: "a", FreeSlots: 2}},
			running: map[string]int{"t": 3},
			now:     t0,
			want:    []string{"u1→a hashed", "u2→a hashed"},
		},
		{
			name:   "duplicate build IDs are assigned once",
			queue:  []Build{lin, lin},
			agents: []Agent{{Name: "a", FreeSlots: 2}},
			now:    t0,
			want:   []string{"b1→a hashed"},
		},
		{name: "empty queue", agents: []Agent{free("a", 1)}, now: t0, want: []string{}},
		{name: "no agents", queue: []Build{lin}, now: t0, want: []string{}},
		{name: "every agent busy", queue: []Build{lin}, agents: []Agent{busy("a"), busy("b")}, now: t0, want: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Route(tc.cfg, tc.queue, tc.agents, tc.running, tc.now)
			if s := summary(got); !slices.Equal(s, tc.want) {
				t.Errorf("Route = %q, want %q", s, tc.want)
			}
			if w := NextWake(tc.cfg, tc.queue, tc.agents, tc.running, tc.now); !w.Equal(tc.wantWake) {
				t.Errorf("NextWake = %v, want %v", w, tc.wantWake)
			}
			if err := checkInvariants(tc.cfg, tc.queue, tc.agents, tc.running, tc.now, got); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestExplanation(t *testing.T) {
	b := Build{ID: "b1", Tenant: "t", Lineage: "L", BaseImages: []string{"golang:1.26", "golang:1.26"}, Chain: chain("c", 6), QueuedAt: t0}
	full := Agent{Name: "a", Lineages: []string{"L"}, BaseImages: []string{"golang:1.26"}, Chains: chain("c", 4)}
	for _, tc := range []struct {
		name        string
		build       func(*Build)
		agents      []Agent
		now         time.Time
		want        string
		score, best int
	}{
		{
			name:   "affinity",
			agents: []Agent{func() Agent { a := full; a.FreeSlots = 1; return a }()},
			now:    t0,
			want:   "cache score 6 (lineage, base image, 4 of 6 instructions)",
			score:  6, best: 6,
		},
		{
			name:   "spilled",
			agents: []Agent{full, {Name: "b", FreeSlots: 1, BaseImages: []string{"golang:1.26"}}},
			now:    t0.Add(2500 * time.Millisecond),
			want:   `spilled after 2.5s: preferred agent "a" busy (cache score 6 there, 1 here)`,
			score:  1, best: 6,
		},
		{
			name:   "hashed",
			agents: []Agent{{Name: "x", FreeSlots: 1}},
			now:    t0,
			want:   `no cache history: lineage hashes to "x"`,
		},
		{
			name:  "spilled early: waiting costs more than a miss",
			build: func(b *Build) { b.Warm, b.Cold = time.Second, 3500*time.Millisecond },
			agents: []Agent{func() Agent { a := full; a.NextFree = t0.Add(3140 * time.Millisecond); return a }(),
				{Name: "b", FreeSlots: 1}},
			now:  t0.Add(40 * time.Millisecond),
			want: `spilled after 40ms: preferred agent "a" busy for ~3.1s more, a cache miss here costs ~2.5s (cache score 6 there, 0 here)`,
			best: 6,
		},
		{
			name:   "spilled after waiting as long as a miss costs",
			build:  func(b *Build) { b.Warm, b.Cold = time.Second, 4*time.Second },
			agents: []Agent{full, {Name: "b", FreeSlots: 1}},
			now:    t0.Add(3 * time.Second),
			want:   `spilled after 3s: preferred agent "a" busy as long as a cache miss here costs (~3s) (cache score 6 there, 0 here)`,
			best:   6,
		},
		{
			name:  "spilled early: a miss is cheap with the registry cache",
			build: func(b *Build) { b.Warm, b.Cold, b.ColdCached = time.Second, 8*time.Second, 2*time.Second },
			agents: []Agent{func() Agent { a := full; a.NextFree = t0.Add(3140 * time.Millisecond); return a }(),
				{Name: "b", FreeSlots: 1}},
			now:  t0.Add(40 * time.Millisecond),
			want: `spilled after 40ms: preferred agent "a" busy for ~3.1s more, a cache miss here costs ~1s with the registry cache (cache score 6 there, 0 here)`,
			best: 6,
		},
		{
			name:   "spilled after waiting as long as a miss costs with the registry cache",
			build:  func(b *Build) { b.Warm, b.Cold, b.ColdCached = time.Second, 9*time.Second, 4*time.Second },
			agents: []Agent{full, {Name: "b", FreeSlots: 1}},
			now:    t0.Add(3 * time.Second),
			want:   `spilled after 3s: preferred agent "a" busy as long as a cache miss here costs (~3s with the registry cache) (cache score 6 there, 0 here)`,
			best:   6,
		},
		{
			name:   "spilled early: no miss",
			build:  func(b *Build) { b.Warm, b.Cold = time.Second, time.Second },
			agents: []Agent{full, {Name: "b", FreeSlots: 1}},
			now:    t0,
			want:   `spilled after 0s: preferred agent "a" busy, no cache miss here (cache score 6 there, 0 here)`,
			best:   6,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := b
			if tc.build != nil {
				tc.build(&b)
			}
			got := Route(Config{}, []Build{b}, tc.agents, nil, tc.now)
			if len(got) != 1 {
				t.Fatalf("Route = %v, want one assignment", got)
			}
			if a := got[0]; a.Explanation != tc.want || a.Score != tc.score || a.BestScore != tc.best {
				t.Errorf("got %q score %d best %d, want %q score %d best %d", a.Explanation, a.Score, a.BestScore, tc.want, tc.score, tc.best)
			}
		})
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{Affinity: "affinity", Spilled: "spilled", Hashed: "hashed", 0: "Reason(0)"} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(r), got, want)
		}
	}
}

// TestIndexIncremental checks that an Index kept current with Set and
// Remove decides like one built from scratch.
func TestIndexIncremental(t *testing.T) {
	b := Build{ID: "b1", Tenant: "t", Lineage: "L", Chain: chain("c", 3), QueuedAt: t0}
	x := NewIndex([]Agent{{Name: "a", FreeSlots: 1, Chains: chain("c", 3)}, {Name: "b", FreeSlots: 1}})
	step := func(name, want string) {
		t.Helper()
		got := strings.Join(summary(x.Decide(Config{}, []Build{b}, nil, t0).Assignments), ",")
		if got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}
	step("initial", "b1→a affinity")
	x.Set(Agent{Name: "a", FreeSlots: 1})
	x.Set(Agent{Name: "b", FreeSlots: 1, Chains: []string{"c1"}})
	step("history moved", "b1→b affinity")
	x.Remove("b")
	x.Set(Agent{Name: "c", FreeSlots: 1, Labels: map[string]string{"k": "v"}, Lineages: []string{"L"}})
	step("b removed, c added", "b1→c affinity")
	b.Labels = map[string]string{"k": "v"}
	x.Set(Agent{Name: "c", FreeSlots: 1, Lineages: []string{"L"}})
	step("c lost its label", "")
	if x.Len() != 2 {
		t.Errorf("Len = %d, want 2", x.Len())
	}
}

// TestManyLabelSets: thousands of distinct label sets (they come from
// users) stay correct and linear.
func TestManyLabelSets(t *testing.T) {
	var queue []Build
	for i := range 5000 {
		queue = append(queue, Build{ID: fmt.Sprintf("b%04d", i), Tenant: "t", QueuedAt: t0.Add(time.Duration(i)),
			Labels: map[string]string{"pool": fmt.Sprint(i % 2500)}})
	}
	agents := []Agent{
		{Name: "a", FreeSlots: 2, Labels: map[string]string{"pool": "7"}},
		{Name: "b", FreeSlots: 1, Labels: map[string]string{"pool": "2499"}},
	}
	got := Route(Config{}, queue, agents, nil, t0.Add(time.Hour))
	want := []string{"b0007→a hashed", "b2499→b hashed", "b2507→a hashed"}
	if s := summary(got); !slices.Equal(s, want) {
		t.Errorf("Route = %q, want %q", s, want)
	}
}
