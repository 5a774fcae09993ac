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

// NextWake returns the earliest time at which a build held back by delay
// scheduling becomes eligible to spill (zero if none), so the caller can set
// a timer instead of polling. Only builds that an agent with a free slot
// could take count: a build blocked for lack of free slots waits for the
// next pull, not for a timer.
func NextWake(cfg Config, queue []Build, agents []Agent, running map[string]int, now time.Time) time.Time {
	return NewIndex(agents).Decide(cfg, queue, running, now).Wake
}

// Decide is Route and NextWake in one pass over the indexed agents: the
// assignments to make now and when to decide again. It reads the agents'
// FreeSlots and Running as last given to [Index.Set] and does not change
// them: the caller applies the assignments and calls Set.
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

// spillable reports whether b has waited Delay for its preferred agent, and
// otherwise records when it will have.
func (d *decision) spillable(b *Build) bool {
	at := b.QueuedAt.Add(d.delay)
	if !d.now.Before(at) {
		return true
	}
	if d.out.Wake.IsZero() || at.Before(d.out.Wake) {
		d.out.Wake = at
	}
	return false
}

// place decides for one build: an assignment, or nothing (held or blocked).
// c is the class of b's labels and has a free slot.
func (d *decision) place(b *Build, c *class) (Assignment, bool) {
	sc := &d.x.sc
	cands := d.x.candidates(b)

	// The best eligible score, and within it the best free agent (pick) and
	// the best busy one (pref), by load then name.
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
			} else if pref < 0 || d.better(s, cands[pref].slot) {
				pref = i
			}
		}
	}
	if best == 0 {
		return d.hashed(b, c)
	}
	if pick >= 0 {
		k := &cands[pick]
		return d.assign(b, k.slot, int(k.score), int(best), Affinity, affinityText(k, len(b.Chain))), true
	}
	if !d.spillable(b) {
		return Assignment{}, false
	}
	// Spill: the next-best score with a free eligible agent, ...
	for i < len(cands) && pick < 0 {
		for v := cands[i].score; i < len(cands) && cands[i].score == v; i++ {
			if s := cands[i].slot; sc.free[s] > 0 && c.has(s) && (pick < 0 || d.better(s, cands[pick].slot)) {
				pick = i
			}
		}
	}
	to, score := int32(-1), int32(0)
	if pick >= 0 {
		to, score = cands[pick].slot, cands[pick].score
	} else { // ... else any free eligible agent (all score 0).
		to = d.leastLoadedFree(c)
	}
	why := fmt.Sprintf("spilled after %s: preferred agent %q busy (cache score %d there, %d here)",
		d.waited(b), d.x.agents[cands[pref].slot].Name, best, score)
	return d.assign(b, to, int(score), int(best), Spilled, why), true
}

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
// lineage's point, the first eligible agent whose load is below
// ceil(c·(L+1)/n) (L the eligible agents' total load, n their number) is
// where the lineage belongs. If it is busy the build waits Delay, then
// walks on to the next such agent with a free slot, and failing that to the
// first free eligible agent on the ring.
func (d *decision) hashed(b *Build, c *class) (Assignment, bool) {
	sc, ring := &d.x.sc, d.x.ring
	bound := int64(math.Ceil(d.c * float64(c.load+1) / float64(len(c.members))))
	start := d.x.ringStart(lineageHash(b))
	stamp := sc.nextStamp()
	// walk returns the ring position after start+from of the first agent not
	// yet seen that is eligible, has a free slot if needFree, and is below
	// the bound if bounded; agents looked at are marked seen.
	over := 0
	walk := func(from int, needFree, bounded bool) (int32, int) {
		for k := from; k < len(ring); k++ {
			j := start + k
			if j >= len(ring) {
				j -= len(ring)
			}
			s := ring[j].slot
			if sc.mark[s] == stamp || !c.has(s) {
				continue
			}
			if bounded && int64(sc.load[s]) >= bound {
				sc.mark[s] = stamp
				over++
				continue
			}
			sc.mark[s] = stamp
			if needFree && sc.free[s] == 0 {
				continue
			}
			return s, k
		}
		return -1, len(ring)
	}
	what := "lineage"
	if b.Lineage == "" {
		what = "build"
	}
	home, k := walk(0, false, true)
	if home >= 0 && sc.free[home] > 0 {
		why := fmt.Sprintf("no cache history: %s hashes to %q", what, d.x.agents[home].Name)
		if over > 0 {
			why += fmt.Sprintf(" (passed %d agent(s) at the load bound %d)", over, bound)
		}
		return d.assign(b, home, 0, 0, Hashed, why), true
	}
	if !d.spillable(b) {
		return Assignment{}, false
	}
	to, _ := walk(k+1, true, true)
	if to < 0 {
		stamp = sc.nextStamp()
		to, _ = walk(0, true, false)
	}
	if to < 0 { // unreachable while c has a free slot
		return Assignment{}, false
	}
	why := fmt.Sprintf("spilled after %s: %s hashes to busy agent", d.waited(b), what)
	if home >= 0 {
		why = fmt.Sprintf("%s %q", why, d.x.agents[home].Name)
	}
	return d.assign(b, to, 0, 0, Spilled, why), true
}

// assign books slot s for b.
func (d *decision) assign(b *Build, s int32, score, best int, r Reason, why string) Assignment {
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
	return Assignment{Build: b.ID, Agent: d.x.agents[s].Name, Score: score, BestScore: best, Reason: r, Explanation: why}
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
