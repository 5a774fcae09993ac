package routing

import (
	"math"
	"slices"
	"time"
)

// scratch is the per-decision state an Index reuses from one decision to the
// next, so a decision allocates little beyond its result.
type scratch struct {
	epoch uint64 // counts decisions; classes and tenants compare against it

	// Agents, by slot, as this decision changes them.
	free, load []int32
	freeList   []int32 // slots that had a free slot (compacted lazily)
	totalFree  int64
	used       []*class // classes entered in this decision
	// backlog is the expected run time of the builds held for each agent
	// so far in this decision (they go before later builds held for it);
	// backlogUnknown marks agents for which a held build's is not known.
	backlog        []time.Duration
	backlogUnknown []bool

	// Scoring and ring walks: mark[s] == stamp means slot s was touched.
	mark     []uint32
	stamp    uint32
	chainLen []int32
	lineage  []bool
	baseHits []int32
	touched  []int32
	counts   []int32
	memo     map[string][]*memoEntry

	// Fairness.
	tenants  map[string]*tenantQueue
	active   []*tenantQueue // heap of tenants with something to route
	keys     []buildKey     // by queue index
	assigned map[string]struct{}

	labelNames [][2]string
	labelBuf   []byte
}

func (sc *scratch) nextStamp() uint32 {
	sc.stamp++
	if sc.stamp == 0 {
		clear(sc.mark)
		sc.stamp = 1
	}
	return sc.stamp
}

// maxClasses bounds the label classes kept between decisions.
const maxClasses = 4096

// begin readies the scratch for a decision over x's agents.
func (x *Index) begin() {
	sc := &x.sc
	sc.epoch++
	if len(x.classes) > maxClasses {
		x.dropClasses()
	}
	n := len(x.agents)
	grow := func(s []int32) []int32 { return slices.Grow(s[:0], n)[:n] }
	sc.free, sc.load, sc.chainLen, sc.baseHits = grow(sc.free), grow(sc.load), grow(sc.chainLen), grow(sc.baseHits)
	if len(sc.mark) < n {
		sc.mark = append(sc.mark, make([]uint32, n-len(sc.mark))...)
		sc.lineage = append(sc.lineage, make([]bool, n-len(sc.lineage))...)
	}
	sc.backlog = slices.Grow(sc.backlog[:0], n)[:n]
	sc.backlogUnknown = slices.Grow(sc.backlogUnknown[:0], n)[:n]
	clear(sc.backlog)
	clear(sc.backlogUnknown)
	sc.freeList, sc.used, sc.totalFree = sc.freeList[:0], sc.used[:0], 0
	for s := range x.agents {
		e := &x.agents[s]
		if !e.live {
			sc.free[s], sc.load[s] = 0, 0
			continue
		}
		sc.free[s], sc.load[s] = clamp32(e.FreeSlots), clamp32(e.Running)
		if sc.free[s] > 0 {
			sc.freeList = append(sc.freeList, int32(s))
			sc.totalFree += int64(sc.free[s])
		}
	}
	if sc.memo == nil {
		sc.memo = make(map[string][]*memoEntry)
		sc.tenants = make(map[string]*tenantQueue)
		sc.assigned = make(map[string]struct{})
	}
	clear(sc.memo)
	clear(sc.assigned)
}

// clamp32 clamps n to [0, MaxInt32].
func clamp32(n int) int32 {
	return int32(min(max(n, 0), math.MaxInt32))
}
