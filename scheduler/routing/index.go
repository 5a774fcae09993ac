package routing

import (
	"maps"
	"slices"
)

// Index is what routing precomputes from the agents so that a decision
// touches only the agents that matter to each build: inverted indexes from
// every lineage, base image and instruction-chain hash to the agents whose
// cache summary holds it, the label classes (which agents carry which
// required labels), and the consistent-hash ring.
//
// The cache score of build b on agent a is the number of layers b can expect
// to reuse on a, plus bonuses that break ties toward warm engines:
//
//	score(b, a) = max{ i+1 : b.Chain[i] ∈ a.Chains }    // layers 0..i are cached
//	            + 1 if b.Lineage ∈ a.Lineages          // same Dockerfile built there recently
//	            + |{ distinct img ∈ b.BaseImages : img ∈ a.BaseImages }|
//
// Chain[i] hashes instructions 0..i, so Chain[i] present means the whole
// prefix is cached even when the agent's bounded summary has dropped a
// shorter one; 0 when no chain hash matches.
//
// Build an Index with [NewIndex] and keep it current with [Index.Set] (an
// agent's pull or heartbeat) and [Index.Remove] (an agent leaves or drains).
// Set compares the new summary with the old one, so calling it on every pull
// is cheap when the cache has not changed.
//
// An Index is not safe for concurrent use: decisions reuse its scratch
// buffers. Decisions never depend on the order agents were added in.
type Index struct {
	agents []agentEntry // by slot; removed agents leave holes for reuse
	slot   map[string]int32
	holes  []int32

	chains, lineages, bases postings

	ring      []ringEntry
	ringDirty bool

	// classes are the sets of agents eligible for a label set, by labelKey;
	// dropped whenever an agent's labels or the set of agents change.
	classes  map[string]*class
	allClass *class

	sc scratch
}

type agentEntry struct {
	Agent // our copy: slices cloned, so the caller may reuse its own
	live  bool
}

// postings maps a hash to the slots of the agents that hold it.
type postings map[string][]int32

// add records that slot s holds keys. Duplicates within keys are recorded
// once: s is the last entry of a list it was just appended to.
func (p postings) add(keys []string, s int32) {
	for _, k := range keys {
		if k == "" {
			continue
		}
		l := p[k]
		if n := len(l); n > 0 && l[n-1] == s {
			continue
		}
		p[k] = append(l, s)
	}
}

// remove forgets that slot s holds keys.
func (p postings) remove(keys []string, s int32) {
	for _, k := range keys {
		l, ok := p[k]
		if !ok {
			continue
		}
		if i := slices.Index(l, s); i >= 0 {
			l[i] = l[len(l)-1]
			l = l[:len(l)-1]
		}
		if len(l) == 0 {
			delete(p, k)
		} else {
			p[k] = l
		}
	}
}

// NewIndex indexes agents. Names must be unique; with duplicates the last
// one wins.
func NewIndex(agents []Agent) *Index {
	x := &Index{
		agents:    make([]agentEntry, 0, len(agents)),
		slot:      make(map[string]int32, len(agents)),
		chains:    make(postings, 64*len(agents)/4+1),
		lineages:  make(postings),
		bases:     make(postings),
		classes:   make(map[string]*class),
		ringDirty: true,
	}
	for i := range agents {
		x.Set(agents[i])
	}
	return x
}

// Len is the number of agents indexed.
func (x *Index) Len() int { return len(x.slot) }

// Set adds agent a or replaces the agent of the same name: its slots, load,
// labels and cache summary. Only the parts of the summary that changed are
// re-indexed.
func (x *Index) Set(a Agent) {
	s, ok := x.slot[a.Name]
	if !ok {
		if n := len(x.holes); n > 0 {
			s, x.holes = x.holes[n-1], x.holes[:n-1]
		} else {
			s = int32(len(x.agents))
			x.agents = append(x.agents, agentEntry{})
		}
		x.slot[a.Name] = s
		x.agents[s] = agentEntry{Agent: Agent{Name: a.Name}, live: true}
		x.ringDirty = true
		x.dropClasses()
	}
	e := &x.agents[s]
	e.FreeSlots, e.Slots, e.Running, e.NextFree = a.FreeSlots, a.Slots, a.Running, a.NextFree
	if !maps.Equal(e.Labels, a.Labels) {
		e.Labels = maps.Clone(a.Labels)
		x.dropClasses()
	}
	update := func(p postings, old *[]string, now []string) {
		if slices.Equal(*old, now) {
			return
		}
		p.remove(*old, s)
		*old = slices.Clone(now)
		p.add(*old, s)
	}
	update(x.chains, &e.Chains, a.Chains)
	update(x.lineages, &e.Lineages, a.Lineages)
	update(x.bases, &e.BaseImages, a.BaseImages)
}

// Remove forgets the agent called name, if indexed.
func (x *Index) Remove(name string) {
	s, ok := x.slot[name]
	if !ok {
		return
	}
	e := &x.agents[s]
	x.chains.remove(e.Chains, s)
	x.lineages.remove(e.Lineages, s)
	x.bases.remove(e.BaseImages, s)
	*e = agentEntry{}
	delete(x.slot, name)
	x.holes = append(x.holes, s)
	x.ringDirty = true
	x.dropClasses()
}

func (x *Index) dropClasses() {
	clear(x.classes)
	x.allClass = nil
}
