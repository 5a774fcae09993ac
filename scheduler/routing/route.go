package routing

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Route decides which queued builds go to which agents now. running holds
// each tenant's builds running or assigned (for caps and fairness). Builds
// not assigned are left queued: their preferred agent is busy and the delay
// has not passed, or no eligible agent has a free slot, or their tenant is
// at its cap.
//
// Route indexes agents on every call; a caller routing often keeps an
// [Index] and calls [Index.Decide].
func Route(cfg Config, queue []Build, agents []Agent, running map[string]int, now time.Time) []Assignment {
	return NewIndex(agents).Decide(cfg, queue, running, now).Assignments
}

// NextWake returns the earliest time at which a held build may spill (its
// delay ends, or its preferred agent overruns its NextFree by what a miss
// costs; zero if none), so the caller can set a timer instead of polling. Only builds that an agent with a free slot
// could take count: a build blocked for lack of free slots waits for the
// next pull, not for a timer.
func NextWake(cfg Config, queue []Build, agents []Agent, running map[string]int, now time.Time) time.Time {
	return NewIndex(agents).Decide(cfg, queue, running, now).Wake
}

// Decide is Route and NextWake in one pass over the indexed agents: the
// assignments to make now and when to decide again. It reads the agents'
// FreeSlots, Running and NextFree as last given to [Index.Set] and does not
// change them: the caller applies the assignments and calls Set.
func (x *Index) Decide(cfg Config, queue []Build, running map[string]int, now time.Time) Decision {
	if len(queue) == 0 || len(x.slot) == 0 {
		return Decision{}
	}
	x.begin()
	if x.sc.totalFree == 0 {
		return Decision{}
	}
	if x.ringDirty {
		x.buildRing()
	}
	d := decision{x: x, cfg: cfg, delay: cfg.delay(), c: cfg.loadFactor(), queue: queue, running: running, now: now}
	d.out.Assignments = make([]Assignment, 0, min(int(x.sc.totalFree), len(queue)))
	d.run()
	return d.out
}

// enter makes c's free slots and load current for this decision.
func (d *decision) enter(c *class) {
	sc := &d.x.sc
	if c.epoch == sc.epoch {
		return
	}
	c.epoch, c.free, c.load = sc.epoch, 0, 0
	for _, s := range c.members {
		c.free += int64(sc.free[s])
		c.load += int64(sc.load[s])
	}
	sc.used = append(sc.used, c)
}

// better reports whether slot a beats slot b among equally scored agents:
// fewer builds (running + assigned in this decision), then name.
func (d *decision) better(a, b int32) bool {
	la, lb := d.x.sc.load[a], d.x.sc.load[b]
	if la != lb {
		return la < lb
	}
	return d.x.agents[a].Name < d.x.agents[b].Name
}

// spillable reports whether b has waited wait for its preferred agent, and
// otherwise records when it will have.
func (d *decision) spillable(b *Build, wait time.Duration) bool {
	at := b.QueuedAt.Add(wait)
	if !d.now.Before(at) {
		return true
	}
	d.wakeAt(at)
	return false
}

// wakeAt makes the decision's Wake no later than at.
func (d *decision) wakeAt(at time.Time) {
	if d.out.Wake.IsZero() || at.Before(d.out.Wake) {
		d.out.Wake = at
	}
}

// warmOn reports whether an agent with candidate k holds b's cache: its
// lineage, or more of its chain than the first instruction (FROM). An agent
// with the base image alone runs b cold.
func warmOn(k *cand) bool { return k != nil && (k.lineage || k.chain > 1) }

// expected is how long b is expected to run on an agent that holds its
// cache (warm) or not: Warm or Cold (ColdCached when the registry holds the
// cache), the latter bounding an unknown Warm; zero if not known.
func expected(b *Build, warm bool) time.Duration {
	if warm && b.Warm > 0 {
		return b.Warm
	}
	return max(b.cold(), 0)
}

// freeAt is when busy slot s is expected to have a slot for the next build
// held for it: its NextFree plus the builds already held for it in this
// decision, spread over its slots. ok is false when not known.
func (d *decision) freeAt(s int32) (at time.Time, ok bool) {
	e, sc := &d.x.agents[s], &d.x.sc
	if e.NextFree.IsZero() || sc.backlogUnknown[s] {
		return time.Time{}, false
	}
	return e.NextFree.Add(sc.backlog[s] / time.Duration(max(e.Slots, 1))), true
}

// sooner reports whether busy slot a is expected to free a slot for b
// before busy slot b: known before unknown, then earlier, then better.
func (d *decision) sooner(a, b int32) bool {
	ta, oka := d.freeAt(a)
	tb, okb := d.freeAt(b)
	switch {
	case oka != okb:
		return oka
	case oka && !ta.Equal(tb):
		return ta.Before(tb)
	}
	return d.better(a, b)
}

// hold leaves b queued for busy slot p: builds held for p after it in this
// decision wait for it too.
func (d *decision) hold(b *Build, p int32, warm bool) (Assignment, bool) {
	sc := &d.x.sc
	if run := expected(b, warm); run > 0 {
		sc.backlog[p] += run
	} else {
		sc.backlogUnknown[p] = true
	}
	return Assignment{}, false
}

// weigh compares, for b held for busy preferred slot p, waiting with
// running now on a free agent (warm or not there). With b's Warm and Cold
// known, miss is what running there costs over running on p with the cache
// (zero when not known). When miss is zero spilling is never worse
// (weighed, spill). Otherwise, when p's NextFree is known, wait is how long
// b is expected to wait for p, and the comparison holds until trusted: once
// p has overrun its NextFree by more than miss, the estimate is not trusted
// and weighed is false.
func (d *decision) weigh(b *Build, p int32, warmThere bool) (wait, miss time.Duration, trusted time.Time, weighed bool) {
	if b.Warm <= 0 || b.cold() <= 0 {
		return 0, 0, time.Time{}, false
	}
	if !warmThere {
		miss = max(b.cold()-b.Warm, 0)
	}
	if miss == 0 {
		return 0, 0, time.Time{}, true
	}
	at, ok := d.freeAt(p)
	if !ok {
		return 0, miss, time.Time{}, false
	}
	trusted = d.x.agents[p].NextFree.Add(miss)
	if !d.now.Before(trusted) {
		return 0, miss, time.Time{}, false
	}
	return max(at.Sub(d.now), 0), miss, trusted, true
}

// place decides for one build: an assignment, or nothing (held or blocked).
// c is the class of b's labels and has a free slot.
func (d *decision) place(b *Build, c *class) (Assignment, bool) {
	sc := &d.x.sc
	if len(b.Preferred) > 0 {
		if pc := d.x.classFor(b.Preferred); pc != c {
			d.enter(pc)
			if pc.free > 0 {
				c = pc
			}
		}
	}
	cands := d.x.candidates(b)

	// The best eligible score, and within it the best free agent (pick,
	// by load then name) and the busy one expected to free a slot first
	// (pref).
	best, pick, pref, i := int32(0), -1, -1, 0
	for i < len(cands) && best == 0 {
		for v := cands[i].score; i < len(cands) && cands[i].score == v; i++ {
			s := cands[i].slot
			if !c.has(s) {
				continue
			}
			best = v
			if sc.free[s] > 0 {
				if pick < 0 || d.better(s, cands[pick].slot) {
					pick = i
				}
			} else if pref < 0 || d.sooner(s, cands[pref].slot) {
				pref = i
			}
		}
	}
	if best == 0 {
		return d.hashed(b, c)
	}
	if pick >= 0 {
		k := &cands[pick]
		return d.assign(b, k.slot, int(k.score), int(best), expected(b, warmOn(k)), Affinity, affinityText(k, len(b.Chain))), true
	}
	// Every best-scoring agent is busy. Where b would spill to: the
	// next-best score with a free eligible agent, ...
	for i < len(cands) && pick < 0 {
		for v := cands[i].score; i < len(cands) && cands[i].score == v; i++ {
			if s := cands[i].slot; sc.free[s] > 0 && c.has(s) && (pick < 0 || d.better(s, cands[pick].slot)) {
				pick = i
			}
		}
	}
	var there *cand
	to, score := int32(-1), int32(0)
	if pick >= 0 {
		there = &cands[pick]
		to, score = there.slot, there.score
	} else { // ... else any free eligible agent (all score 0).
		to = d.leastLoadedFree(c)
	}
	k := &cands[pref]
	p, warm := k.slot, warmOn(there)
	why := ""
	wait, miss, trusted, weighed := d.weigh(b, p, warm)
	switch {
	case weighed && (miss == 0 || wait > miss):
		// Quincy-style: waiting is expected to cost more than the miss.
		why = fmt.Sprintf("spilled after %s: preferred agent %q busy", d.waited(b), d.x.agents[p].Name)
		if miss > 0 {
			why += fmt.Sprintf(" for ~%s more, %s", roundTo(wait), b.missCost(miss))
		} else {
			why += ", no cache miss here"
		}
	case weighed:
		// The lineage's history says waiting for p is cheaper than a miss,
		// delay or not, for as long as p's estimate is trusted.
		d.wakeAt(trusted)
		return d.hold(b, p, warmOn(k))
	case !d.spillable(b, max(d.delay, miss)):
		// Without a trusted estimate of the wait: delay scheduling, and
		// when the miss's cost is known, ski rental — wait at most what the
		// miss would cost.
		return d.hold(b, p, warmOn(k))
	default:
		why = fmt.Sprintf("spilled after %s: preferred agent %q busy", d.waited(b), d.x.agents[p].Name)
		if miss > d.delay {
			why += " as long as a cache miss here costs (~" + roundTo(miss).String()
			if b.ColdCached > 0 {
				why += " with the registry cache"
			}
			why += ")"
		}
	}
	if !d.spilling && d.now.Before(b.QueuedAt.Add(2*max(d.delay, miss))) {
		// Placed again once the builds behind it that need no spill are.
		d.spills = append(d.spills, spill{b, c})
		return Assignment{}, false
	}
	why += fmt.Sprintf(" (cache score %d there, %d here)", best, score)
	return d.assign(b, to, int(score), int(best), expected(b, warm), Spilled, why), true
}

// roundTo rounds an estimate for explanations: 100ms steps.
func roundTo(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }

// leastLoadedFree is the free agent of c with the fewest builds, then the
// first by name. c has a free slot.
func (d *decision) leastLoadedFree(c *class) int32 {
	sc := &d.x.sc
	to, kept := int32(-1), sc.freeList[:0]
	for _, s := range sc.freeList {
		if sc.free[s] == 0 {
			continue // compact: full for the rest of this decision
		}
		kept = append(kept, s)
		if c.has(s) && (to < 0 || d.better(s, to)) {
			to = s
		}
	}
	sc.freeList = kept
	return to
}

// hashed places a build no eligible agent has history for: consistent
// hashing with bounded loads on its lineage. Walking the ring from the
// lineage's point, it takes the first eligible agent with a free slot whose
// load is below ceil(c·(L+1)/n) (L the eligible agents' total load, n their
// number); failing that, the first eligible agent with a free slot. It does
// not wait for a busy agent: with no cache anywhere, waiting saves nothing,
// and the lineage's next build follows this one by affinity.
func (d *decision) hashed(b *Build, c *class) (Assignment, bool) {
	sc, ring := &d.x.sc, d.x.ring
	bound := int64(math.Ceil(d.c * float64(c.load+1) / float64(len(c.members))))
	start := d.x.ringStart(lineageHash(b))
	// walk returns the first eligible agent not yet seen after start that
	// has a free slot and, if bounded, is below the bound; agents looked at
	// are marked seen, and those passed counted.
	busy, over := 0, 0
	walk := func(stamp uint32, bounded bool) int32 {
		for k := range ring {
			j := start + k
			if j >= len(ring) {
				j -= len(ring)
			}
			s := ring[j].slot
			if sc.mark[s] == stamp || !c.has(s) {
				continue
			}
			sc.mark[s] = stamp
			switch {
			case sc.free[s] == 0:
				busy++
			case bounded && int64(sc.load[s]) >= bound:
				over++
			default:
				return s
			}
		}
		return -1
	}
	to := walk(sc.nextStamp(), true)
	if to < 0 {
		to = walk(sc.nextStamp(), false)
	}
	if to < 0 { // unreachable while c has a free slot
		return Assignment{}, false
	}
	what := "lineage"
	if b.Lineage == "" {
		what = "build"
	}
	why := fmt.Sprintf("no cache history: %s hashes to %q", what, d.x.agents[to].Name)
	switch {
	case busy > 0 && over > 0:
		why += fmt.Sprintf(" (passed %d busy agent(s) and %d at the load bound %d)", busy, over, bound)
	case busy > 0:
		why += fmt.Sprintf(" (passed %d busy agent(s))", busy)
	case over > 0:
		why += fmt.Sprintf(" (passed %d agent(s) at the load bound %d)", over, bound)
	}
	return d.assign(b, to, 0, 0, expected(b, false), Hashed, why), true
}

// assign books slot s for b.
func (d *decision) assign(b *Build, s int32, score, best int, run time.Duration, r Reason, why string) Assignment {
	sc := &d.x.sc
	sc.free[s]--
	sc.load[s]++
	sc.totalFree--
	for _, c := range sc.used {
		if c.has(s) {
			c.free--
			c.load++
		}
	}
	return Assignment{Build: b.ID, Agent: d.x.agents[s].Name, Score: score, BestScore: best, Expected: run, Reason: r, Explanation: why}
}

func (d *decision) waited(b *Build) time.Duration {
	return d.now.Sub(b.QueuedAt).Round(time.Millisecond)
}

// affinityText explains a cache score: `cache score 6 (lineage, base image,
// 4 of 6 instructions)`.
func affinityText(k *cand, instructions int) string {
	var parts []string
	if k.lineage {
		parts = append(parts, "lineage")
	}
	switch {
	case k.bases == 1:
		parts = append(parts, "base image")
	case k.bases > 1:
		parts = append(parts, fmt.Sprintf("%d base images", k.bases))
	}
	if k.chain > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d instructions", k.chain, instructions))
	}
	return fmt.Sprintf("cache score %d (%s)", k.score, strings.Join(parts, ", "))
}
