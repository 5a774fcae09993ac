package routing

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// refScore is the score formula written out naively, to check the index.
func refScore(b *Build, a *Agent) int {
	score := 0
	for i, h := range b.Chain {
		if h != "" && slices.Contains(a.Chains, h) {
			score = i + 1
		}
	}
	if b.Lineage != "" && slices.Contains(a.Lineages, b.Lineage) {
		score++
	}
	for j, img := range b.BaseImages {
		if img != "" && !slices.Contains(b.BaseImages[:j], img) && slices.Contains(a.BaseImages, img) {
			score++
		}
	}
	return score
}

// refWarm reports whether a holds b's cache: its lineage, or its chain
// beyond the first instruction.
func refWarm(b *Build, a *Agent) bool {
	if b.Lineage != "" && slices.Contains(a.Lineages, b.Lineage) {
		return true
	}
	for i, h := range b.Chain {
		if i > 0 && h != "" && slices.Contains(a.Chains, h) {
			return true
		}
	}
	return false
}

// weighable reports whether b's Warm and Cold are known: the router may
// then spill it before its delay, or hold it past its delay.
func weighable(b *Build) bool { return b.Warm > 0 && b.Cold > 0 }

// checkInvariants checks what must hold of any Route result.
func checkInvariants(cfg Config, queue []Build, agents []Agent, running map[string]int, now time.Time, as []Assignment) error {
	var errs []error
	byID := map[string]*Build{}
	for i := range queue {
		if _, ok := byID[queue[i].ID]; !ok {
			byID[queue[i].ID] = &queue[i]
		}
	}
	byName := map[string]*Agent{}
	for i := range agents {
		byName[agents[i].Name] = &agents[i]
	}
	bestOf := func(b *Build) int {
		best := 0
		for i := range agents {
			if hasLabels(agents[i].Labels, b.Labels) {
				best = max(best, refScore(b, &agents[i]))
			}
		}
		return best
	}
	perAgent, perTenant, assigned := map[string]int{}, map[string]int{}, map[string]bool{}
	for _, a := range as {
		b, ag := byID[a.Build], byName[a.Agent]
		switch {
		case b == nil:
			errs = append(errs, fmt.Errorf("%s: not in the queue", a.Build))
			continue
		case ag == nil:
			errs = append(errs, fmt.Errorf("%s: unknown agent %q", a.Build, a.Agent))
			continue
		case assigned[a.Build]:
			errs = append(errs, fmt.Errorf("%s: assigned twice", a.Build))
		}
		assigned[a.Build] = true
		perAgent[a.Agent]++
		perTenant[b.Tenant]++
		if !hasLabels(ag.Labels, b.Labels) {
			errs = append(errs, fmt.Errorf("%s: agent %q lacks labels %v", a.Build, a.Agent, b.Labels))
		}
		score, best := refScore(b, ag), bestOf(b)
		if a.Score != score || a.BestScore != best {
			errs = append(errs, fmt.Errorf("%s on %q: score %d best %d, want %d %d", a.Build, a.Agent, a.Score, a.BestScore, score, best))
		}
		switch a.Reason {
		case Affinity:
			if score != best || best == 0 {
				errs = append(errs, fmt.Errorf("%s: affinity with score %d of best %d", a.Build, score, best))
			}
		case Hashed:
			if best != 0 {
				errs = append(errs, fmt.Errorf("%s: hashed with best score %d", a.Build, best))
			}
		case Spilled:
			if now.Before(b.QueuedAt.Add(cfg.delay())) && !weighable(b) {
				errs = append(errs, fmt.Errorf("%s: spilled before its delay passed, its costs unknown", a.Build))
			}
		default:
			errs = append(errs, fmt.Errorf("%s: reason %v", a.Build, a.Reason))
		}
		if a.Explanation == "" {
			errs = append(errs, fmt.Errorf("%s: no explanation", a.Build))
		}
		if want := expected(b, refWarm(b, ag)); a.Expected != want {
			errs = append(errs, fmt.Errorf("%s on %q: expected run time %v, want %v", a.Build, a.Agent, a.Expected, want))
		}
	}
	left := map[string]int{} // free slots left
	for _, ag := range agents {
		left[ag.Name] = max(ag.FreeSlots, 0) - perAgent[ag.Name]
		if left[ag.Name] < 0 {
			errs = append(errs, fmt.Errorf("agent %q: %d assigned, %d free slots", ag.Name, perAgent[ag.Name], ag.FreeSlots))
		}
	}
	// A tenant's first queued build's policy cap wins over cfg's.
	policyCap := map[string]int{}
	for _, b := range queue {
		if _, ok := policyCap[b.Tenant]; !ok {
			policyCap[b.Tenant] = b.MaxConcurrent
		}
	}
	limit := func(tenant string) int64 {
		if c := policyCap[tenant]; c > 0 {
			return int64(c)
		}
		return cfg.limit(tenant)
	}
	atCap := func(tenant string) bool {
		l := limit(tenant)
		return l > 0 && int64(max(running[tenant], 0)+perTenant[tenant]) >= l
	}
	for tenant, n := range perTenant {
		if l := limit(tenant); l > 0 && int64(max(running[tenant], 0)+n) > l {
			errs = append(errs, fmt.Errorf("tenant %q: %d running + %d assigned over cap %d", tenant, running[tenant], n, l))
		}
	}
	// Work conservation: a build left queued whose tenant is under its cap,
	// while an eligible agent is free, has cache history, waits for a busy
	// best-scoring agent, and is within its delay — or past it only while
	// its costs say a miss costs more than waiting, by the estimate of a
	// best-scoring agent that has not overrun it by more than that cost, or
	// for no longer than the miss costs.
	for id, b := range byID {
		if assigned[id] || atCap(b.Tenant) {
			continue
		}
		freeEligible := false
		for i := range agents {
			if left[agents[i].Name] > 0 && hasLabels(agents[i].Labels, b.Labels) {
				freeEligible = true
			}
		}
		if !freeEligible {
			continue
		}
		best := bestOf(b)
		if best == 0 {
			errs = append(errs, fmt.Errorf("%s: no cache history, left queued while an eligible agent is free", id))
			continue
		}
		trusted := false
		for i := range agents {
			ag := &agents[i]
			if !hasLabels(ag.Labels, b.Labels) || refScore(b, ag) != best {
				continue
			}
			if left[ag.Name] > 0 {
				errs = append(errs, fmt.Errorf("%s: held though best agent %q is free", id, ag.Name))
			}
			if weighable(b) && b.Cold > b.Warm && !ag.NextFree.IsZero() && now.Before(ag.NextFree.Add(b.Cold-b.Warm)) {
				trusted = true
			}
		}
		skiRental := weighable(b) && now.Before(b.QueuedAt.Add(max(cfg.delay(), b.Cold-b.Warm)))
		if !now.Before(b.QueuedAt.Add(cfg.delay())) && !trusted && !skiRental {
			errs = append(errs, fmt.Errorf("%s: left queued after its delay while an eligible agent is free", id))
		}
	}
	return errors.Join(errs...)
}

// scenario is a random routing input.
type scenario struct {
	cfg     Config
	queue   []Build
	agents  []Agent
	running map[string]int
	now     time.Time
}

// randomScenario makes agents and builds that share lineages, chains, base
// images and labels often enough for every path to be taken. Every build
// has at least one eligible agent.
func randomScenario(r *rand.Rand, nAgents, nBuilds int) scenario {
	lineages := 1 + r.IntN(2*nBuilds+1)
	bases := []string{"debian:12", "alpine:3", "golang:1.26", "node:22"}
	tenants := []string{"t0", "t1", "t2", "t3"}
	labelSets := []map[string]string{nil, {"arch": "arm64"}, {"gpu": "true"}, {"arch": "arm64", "gpu": "true"}}
	s := scenario{
		cfg: Config{
			Delay:         time.Duration(r.IntN(4)) * time.Second, // 0: the default 2s
			TenantWeights: map[string]int{"t0": 1 + r.IntN(3), "t1": 1 + r.IntN(3)},
			TenantCaps:    map[string]int{"t1": r.IntN(4)},
			DefaultCap:    r.IntN(6),
			LoadFactor:    1 + r.Float64(),
		},
		running: map[string]int{},
		now:     t0.Add(time.Duration(r.IntN(10)) * time.Second),
	}
	for _, t := range tenants {
		s.running[t] = r.IntN(3)
	}
	lineageChain := func(l int) []string { return chain(fmt.Sprintf("l%d-", l), 1+l%7) }
	for i := range nAgents {
		a := Agent{Name: fmt.Sprintf("agent-%02d", i), Slots: 1 + r.IntN(3)}
		a.Running = r.IntN(a.Slots + 1)
		a.FreeSlots = r.IntN(a.Slots - a.Running + 1)
		if r.IntN(3) > 0 {
			a.NextFree = t0.Add(time.Duration(r.IntN(15000)-5000) * time.Millisecond)
		}
		a.Labels = map[string]string{"os": "linux"}
		if r.IntN(3) == 0 {
			a.Labels["arch"] = "arm64"
		}
		if r.IntN(4) == 0 {
			a.Labels["gpu"] = "true"
		}
		for range r.IntN(4) {
			l := r.IntN(lineages)
			a.Lineages = append(a.Lineages, fmt.Sprint("L", l))
			c := lineageChain(l)
			a.Chains = append(a.Chains, c[:1+r.IntN(len(c))]...)
		}
		for _, b := range bases {
			if r.IntN(3) == 0 {
				a.BaseImages = append(a.BaseImages, b)
			}
		}
		s.agents = append(s.agents, a)
	}
	if nAgents > 0 { // every label set has an eligible agent
		s.agents[0].Labels = map[string]string{"arch": "arm64", "gpu": "true"}
	}
	for i := range nBuilds {
		l := r.IntN(lineages)
		b := Build{
			ID:       fmt.Sprintf("b%03d", i),
			Tenant:   tenants[r.IntN(len(tenants))],
			Priority: int32(r.IntN(3)),
			Lineage:  fmt.Sprint("L", l),
			Chain:    lineageChain(l),
			Labels:   labelSets[r.IntN(len(labelSets))],
			QueuedAt: t0.Add(time.Duration(r.IntN(8000)) * time.Millisecond),
		}
		if r.IntN(5) == 0 {
			b.Chain[len(b.Chain)-1] = fmt.Sprint("edited", i)
		}
		if r.IntN(10) == 0 {
			b.Lineage = ""
		}
		b.BaseImages = []string{bases[l%len(bases)]}
		b.Warm, b.Cold = lineageCosts(l)
		s.queue = append(s.queue, b)
	}
	return s
}

// lineageCosts are lineage l's Warm and Cold: both known for most, one or
// neither for some, a miss sometimes free (Cold ≤ Warm).
func lineageCosts(l int) (warm, cold time.Duration) {
	warm = time.Duration(500+l*37%2500) * time.Millisecond
	cold = warm + time.Duration(l*53%4000-500)*time.Millisecond
	switch l % 6 {
	case 0:
		return 0, 0
	case 1:
		return 0, cold
	case 2:
		return warm, 0
	}
	return warm, cold
}

func TestRouteProperties(t *testing.T) {
	for seed := range uint64(300) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 1))
			s := randomScenario(r, 1+r.IntN(12), r.IntN(40))
			got := Route(s.cfg, s.queue, s.agents, s.running, s.now)
			if err := checkInvariants(s.cfg, s.queue, s.agents, s.running, s.now, got); err != nil {
				t.Fatal(err)
			}
			// Deterministic: again, with the agents shuffled, and through a
			// reused Index built in another order.
			if again := Route(s.cfg, s.queue, s.agents, s.running, s.now); !slices.Equal(again, got) {
				t.Fatalf("second call differs:\n%v\n%v", got, again)
			}
			shuffled := slices.Clone(s.agents)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			if again := Route(s.cfg, s.queue, shuffled, s.running, s.now); !slices.Equal(again, got) {
				t.Fatalf("shuffled agents change the result:\n%v\n%v", got, again)
			}
			x := NewIndex(nil)
			for _, a := range shuffled {
				x.Set(Agent{Name: a.Name, Chains: []string{"stale"}, Labels: map[string]string{"stale": "1"}})
			}
			x.Set(Agent{Name: "gone", FreeSlots: 5})
			x.Decide(s.cfg, s.queue, s.running, s.now) // dirty the scratch
			x.Remove("gone")
			for _, a := range shuffled {
				x.Set(a)
			}
			if again := x.Decide(s.cfg, s.queue, s.running, s.now).Assignments; !slices.Equal(again, got) {
				t.Fatalf("reused index differs:\n%v\n%v", got, again)
			}
		})
	}
}

// sim drives the router through time like the scheduler does: route, hand
// out the assignments, let some builds finish, advance the clock. It is the
// harness for scenario tests (nomad's scheduler/tests/testing.go).
type sim struct {
	t       *testing.T
	r       *rand.Rand
	s       scenario
	x       *Index
	runs    map[string][]string // agent → tenants of the builds it runs
	reasons map[Reason]int
}

func newSim(t *testing.T, r *rand.Rand, s scenario) *sim {
	m := &sim{t: t, r: r, s: s, x: NewIndex(s.agents), runs: map[string][]string{}, reasons: map[Reason]int{}}
	clear(s.running) // what already runs belongs to someone, and finishes
	for i := range s.agents {
		for range s.agents[i].Running {
			tenant := fmt.Sprint("t", r.IntN(4))
			s.running[tenant]++
			m.runs[s.agents[i].Name] = append(m.runs[s.agents[i].Name], tenant)
		}
	}
	return m
}

// step routes once and applies the result; it returns the assignments.
func (m *sim) step() []Assignment {
	s := &m.s
	d := m.x.Decide(s.cfg, s.queue, s.running, s.now)
	if err := checkInvariants(s.cfg, s.queue, s.agents, s.running, s.now, d.Assignments); err != nil {
		m.t.Fatalf("at %v: %v", s.now, err)
	}
	if want := Route(s.cfg, s.queue, s.agents, s.running, s.now); !slices.Equal(want, d.Assignments) {
		m.t.Fatalf("at %v: reused index decided %v, Route %v", s.now, d.Assignments, want)
	}
	if !d.Wake.IsZero() && !d.Wake.After(s.now) {
		m.t.Fatalf("at %v: wake %v is not in the future", s.now, d.Wake)
	}
	done := map[string]bool{}
	for _, a := range d.Assignments {
		done[a.Build] = true
		m.reasons[a.Reason]++
		i := slices.IndexFunc(s.agents, func(g Agent) bool { return g.Name == a.Agent })
		g := &s.agents[i]
		g.FreeSlots--
		g.Running++
		if a.Expected > 0 {
			if end := s.now.Add(a.Expected); g.NextFree.IsZero() || end.Before(g.NextFree) {
				g.NextFree = end
			}
		} else {
			g.NextFree = time.Time{}
		}
		b := s.queue[slices.IndexFunc(s.queue, func(b Build) bool { return b.ID == a.Build })]
		s.running[b.Tenant]++
		m.runs[g.Name] = append(m.runs[g.Name], b.Tenant)
		g.Lineages = append([]string{b.Lineage}, g.Lineages...)
		g.Chains = append(slices.Clone(b.Chain), g.Chains...)
	}
	s.queue = slices.DeleteFunc(s.queue, func(b Build) bool { return done[b.ID] })
	// Some builds finish; agents pull again.
	for i := range s.agents {
		g := &s.agents[i]
		if g.Running > 0 && m.r.IntN(3) == 0 {
			g.Running--
			if m.r.IntN(2) == 0 {
				g.NextFree = s.now.Add(time.Duration(m.r.IntN(4000)) * time.Millisecond)
			}
			runs := m.runs[g.Name]
			s.running[runs[0]]--
			m.runs[g.Name] = runs[1:]
		}
		g.FreeSlots = max(g.Slots-g.Running, 0)
		m.x.Set(*g)
	}
	s.now = s.now.Add(time.Duration(m.r.IntN(1500)) * time.Millisecond)
	return d.Assignments
}

// TestEventualAssignment: with time advancing and agents freeing slots,
// every build is assigned.
func TestEventualAssignment(t *testing.T) {
	for seed := range uint64(60) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 2))
			s := randomScenario(r, 1+r.IntN(10), 1+r.IntN(80))
			m := newSim(t, r, s)
			for range 2000 {
				if len(m.s.queue) == 0 {
					return
				}
				m.step()
			}
			t.Fatalf("%d builds never assigned, e.g. %+v", len(m.s.queue), m.s.queue[0])
		})
	}
}

// TestSimulationReusesCaches: over a long run with recurring lineages, most
// builds land where their layers are.
func TestSimulationReusesCaches(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	s := randomScenario(r, 8, 0)
	for i := range s.agents {
		s.agents[i].Labels = nil
		s.agents[i].Lineages, s.agents[i].Chains = nil, nil
	}
	s.cfg = Config{}
	m := newSim(t, r, s)
	for round := range 400 {
		for j := range 3 { // three builds of 12 recurring lineages arrive per round
			l := r.IntN(12)
			m.s.queue = append(m.s.queue, Build{ID: fmt.Sprintf("r%d-%d", round, j), Tenant: "t", Lineage: fmt.Sprint("L", l),
				Chain: chain(fmt.Sprintf("l%d-", l), 5), QueuedAt: m.s.now})
		}
		m.step()
	}
	total := m.reasons[Affinity] + m.reasons[Spilled] + m.reasons[Hashed]
	if m.reasons[Affinity] < total*3/4 {
		t.Errorf("reasons %v: want at least 3/4 affinity", m.reasons)
	}
}
