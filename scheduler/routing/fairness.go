package routing

import (
	"math/bits"
	"slices"
	"time"
)

// tenantQueue is one tenant's share of the queue during a decision, split
// by label class: when no agent of a class has a free slot, all of the
// tenant's builds needing it are passed over at once.
type tenantQueue struct {
	name   string
	weight int64
	limit  int64 // cap, 0 = unlimited
	count  int64 // running + assigned in this decision
	parts  []*part
	pool   []*part          // parts of earlier decisions, for reuse
	byCls  map[*class]*part // parts by class, once there are many
	epoch  uint64           // decision this entry was last reset for
}

// manyParts is when a tenant's parts are found through a map: label sets
// come from users, and a queue may hold thousands of different ones.
const manyParts = 8

// part is a tenant's builds needing one label class.
type part struct {
	c      *class
	builds []int32 // queue indexes, a heap in fairness order once heaped
	heaped bool
}

// partFor returns t's part for class c, adding it if new.
func (t *tenantQueue) partFor(c *class) *part {
	if len(t.parts) > manyParts {
		if p, ok := t.byCls[c]; ok {
			return p
		}
	} else {
		for _, p := range t.parts {
			if p.c == c {
				return p
			}
		}
	}
	var p *part
	if len(t.pool) > len(t.parts) {
		p = t.pool[len(t.parts)]
		p.c, p.builds, p.heaped = c, p.builds[:0], false
	} else {
		p = &part{c: c}
		t.pool = append(t.pool, p)
	}
	t.parts = append(t.parts, p)
	switch {
	case len(t.parts) == manyParts+1:
		t.byCls = make(map[*class]*part, 2*manyParts)
		for _, q := range t.parts {
			t.byCls[q.c] = q
		}
	case len(t.parts) > manyParts+1:
		t.byCls[c] = p
	}
	return p
}

// before orders tenants for weighted round-robin: lowest
// (running+assigned)/weight first, then by name.
func (a *tenantQueue) before(b *tenantQueue) bool {
	// a.count/a.weight < b.count/b.weight, multiplied out in 128 bits.
	ah, al := bits.Mul64(uint64(a.count), uint64(b.weight))
	bh, bl := bits.Mul64(uint64(b.count), uint64(a.weight))
	if ah != bh {
		return ah < bh
	}
	if al != bl {
		return al < bl
	}
	return a.name < b.name
}

func (a *tenantQueue) full() bool { return a.limit > 0 && a.count >= a.limit }

// buildKey is a build's place in its tenant's order, packed for the heap.
type buildKey struct {
	sec  int64 // QueuedAt, wall clock
	nsec int32
	prio int32
}

func keyOf(b *Build) buildKey {
	return buildKey{sec: b.QueuedAt.Unix(), nsec: int32(b.QueuedAt.Nanosecond()), prio: b.Priority}
}

// group splits the queue by tenant and label class and makes sc.active the
// heap of tenants that may take a build. Builds of tenants at their cap are
// left out. It is the one pass over the whole queue a decision makes.
func (d *decision) group() {
	sc := &d.x.sc
	sc.keys = slices.Grow(sc.keys[:0], len(d.queue))[:len(d.queue)]
	sc.active = sc.active[:0]
	var last *tenantQueue // queues often come in runs of one tenant and class
	var lastPart *part
	for i := range d.queue {
		b := &d.queue[i]
		t := last
		if t == nil || t.name != b.Tenant {
			t = sc.tenants[b.Tenant]
			if t == nil {
				t = &tenantQueue{name: b.Tenant}
				sc.tenants[b.Tenant] = t
			}
			if t.epoch != sc.epoch {
				t.epoch, t.parts, t.byCls = sc.epoch, t.parts[:0], nil
				t.weight, t.limit = d.cfg.weight(t.name), d.cfg.limit(t.name)
				if b.Weight > 0 { // the tenant's policy, from its record
					t.weight = int64(b.Weight)
				}
				if b.MaxConcurrent > 0 {
					t.limit = int64(b.MaxConcurrent)
				}
				t.count = int64(max(d.running[t.name], 0))
				if !t.full() {
					sc.active = append(sc.active, t)
				}
			}
			last, lastPart = t, nil
		}
		if t.full() {
			continue
		}
		if c := d.x.classFor(b.Labels); lastPart == nil || lastPart.c != c {
			lastPart = t.partFor(c)
		}
		lastPart.builds = append(lastPart.builds, int32(i))
		sc.keys[i] = keyOf(b)
	}
	for name, t := range sc.tenants { // forget tenants that left the queue
		if t.epoch != sc.epoch {
			delete(sc.tenants, name)
		}
	}
	for i := len(sc.active)/2 - 1; i >= 0; i-- {
		d.tenantDown(i)
	}
}

func (d *decision) tenantDown(i int) {
	h := d.x.sc.active
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r].before(h[l]) {
			m = r
		}
		if !h[m].before(h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// dropTenant removes the tenant at the top of the heap.
func (d *decision) dropTenant() {
	h := d.x.sc.active
	n := len(h) - 1
	h[0] = h[n]
	h[n] = nil
	d.x.sc.active = h[:n]
	d.tenantDown(0)
}

// buildBefore is the order within a tenant: higher Priority, older
// QueuedAt, then ID (then queue position, for duplicate IDs).
func (d *decision) buildBefore(i, j int32) bool {
	a, b := &d.x.sc.keys[i], &d.x.sc.keys[j]
	if a.prio != b.prio {
		return a.prio > b.prio
	}
	if a.sec != b.sec {
		return a.sec < b.sec
	}
	if a.nsec != b.nsec {
		return a.nsec < b.nsec
	}
	if ia, ib := d.queue[i].ID, d.queue[j].ID; ia != ib {
		return ia < ib
	}
	return i < j
}

func (d *decision) buildDown(h []int32, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && d.buildBefore(h[r], h[l]) {
			m = r
		}
		if !d.buildBefore(h[m], h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// next pops t's next build in fairness order among those whose class has
// a free slot, with its class; -1 if there is none.
func (d *decision) next(t *tenantQueue) (int32, *class) {
	var best *part
	for _, p := range t.parts {
		if len(p.builds) == 0 {
			continue
		}
		if d.enter(p.c); p.c.free <= 0 {
			continue
		}
		if !p.heaped {
			for i := len(p.builds)/2 - 1; i >= 0; i-- {
				d.buildDown(p.builds, i)
			}
			p.heaped = true
		}
		if best == nil || d.buildBefore(p.builds[0], best.builds[0]) {
			best = p
		}
	}
	if best == nil {
		return -1, nil
	}
	h := best.builds
	top, n := h[0], len(h)-1
	h[0] = h[n]
	best.builds = h[:n]
	d.buildDown(best.builds, 0)
	return top, best.c
}

// decision is one routing pass.
type decision struct {
	x       *Index
	cfg     Config
	delay   time.Duration
	c       float64
	queue   []Build
	running map[string]int
	now     time.Time
	out     Decision

	// Spills wait for a second pass (see run): the builds that would spill
	// in the first, in fairness order, with their classes.
	spills    []spill
	spilling  bool // past the first pass
	lookahead int  // builds the first pass may still look at past a spill set aside
}

type spill struct {
	b *Build
	c *class
}

// run is the fairness loop: it offers the free slots to tenants in weighted
// round-robin order, each tenant its next routable build, until the slots or
// the routable builds run out. A build that cannot go now (held for its
// preferred agent, or no eligible agent free) is passed over for this
// decision only; it stays queued, and the tenant's next build is tried.
// Builds whose label class has no free slot left are not even looked at.
//
// Locality first: a build that would spill is set aside for a while, so the
// builds just behind it that can run where their cache is take the free
// slots first, and a spill does not take the slot of an agent that a later
// build was waiting for. The builds set aside are placed again, in the
// order they were met, on what is left, and the loop goes on from there.
// Setting aside is bounded twice: the loop looks at most lookahead builds
// past the first one set aside (so a decision costs about what it did
// without), and a build that has waited twice as long as it had to before
// spilling is not set aside at all (so none starves behind younger ones).
func (d *decision) run() {
	sc := &d.x.sc
	d.group()
	d.lookahead = lookaheadPerSlot*int(sc.totalFree) + lookaheadMin
	d.fair()
	d.spilling = true
	for _, sp := range d.spills {
		if sc.totalFree == 0 {
			break
		}
		t := sc.tenants[sp.b.Tenant]
		if _, dup := sc.assigned[sp.b.ID]; dup || t.full() || sp.c.free <= 0 {
			continue
		}
		if a, ok := d.place(sp.b, sp.c); ok {
			sc.assigned[sp.b.ID] = struct{}{}
			d.out.Assignments = append(d.out.Assignments, a)
			t.count++
		}
	}
	// Tenants at their cap now are skipped as their turn comes.
	d.fair()
}

// How far the first pass looks past a build set aside (see run).
const (
	lookaheadPerSlot = 2
	lookaheadMin     = 16
)

// fair runs the weighted round-robin over the tenants until the free slots
// or the routable builds run out or, in the first pass, the look-ahead.
func (d *decision) fair() {
	sc := &d.x.sc
	for len(sc.active) > 0 && sc.totalFree > 0 {
		t := sc.active[0]
		if t.full() {
			d.dropTenant()
			continue
		}
		placed := false
		for sc.totalFree > 0 {
			if !d.spilling && len(d.spills) > 0 {
				if d.lookahead <= 0 {
					return
				}
				d.lookahead--
			}
			i, c := d.next(t)
			if i < 0 {
				break
			}
			b := &d.queue[i]
			if _, dup := sc.assigned[b.ID]; dup {
				continue
			}
			if a, ok := d.place(b, c); ok {
				sc.assigned[b.ID] = struct{}{}
				d.out.Assignments = append(d.out.Assignments, a)
				placed = true
				break
			}
		}
		if !placed {
			if !d.spilling && len(d.spills) > 0 && d.lookahead <= 0 {
				return // the tenant may have builds left for the last pass
			}
			d.dropTenant()
			continue
		}
		t.count++
		if t.full() {
			d.dropTenant()
		} else {
			d.tenantDown(0)
		}
	}
}
