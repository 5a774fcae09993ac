package scheduler

import (
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// costs learns from finished builds how long each lineage's builds hold an
// agent's slot when the agent holds their cache (warm: some steps cached)
// and when it does not (cold: none cached), for the router to weigh waiting
// for a busy agent against a cache miss (routing.Build.Warm and Cold) and
// to expect when a busy agent frees a slot. The time counted is from the
// assignment to the end as the dispatcher sees them (context transfer and
// push included), else the record's started-to-finished time. A build with
// no steps to cache counts as both: where it runs does not matter.
//
// Each estimate is a moving average that gives the newest build a weight of
// costWeight. A lineage that has run only cold so far borrows the farm's
// warm/cold ratio (the same kind of average over lineages that know both),
// so its first rebuilds are weighed too; likewise the other way round.
//
// costs belongs to the dispatcher goroutine.
type costs struct {
	byLineage map[string]*lineageCost
	ratio     float64 // warm/cold over the farm; 0 until known
}

type lineageCost struct{ warm, cold time.Duration }

const (
	costWeight = 0.3
	// maxCostLineages bounds the table; past it an arbitrary lineage is
	// forgotten (it is learnt again from its next build).
	maxCostLineages = 100_000
)

func newCosts() *costs { return &costs{byLineage: map[string]*lineageCost{}} }

// observe learns from a finished build's record, which held its slot for
// held (zero: not known, the record's times count), and reports whether an
// estimate changed.
func (c *costs) observe(b *kilnv1.Build, held time.Duration) bool {
	lineage := b.GetAffinity().GetLineage()
	r := b.GetResult()
	if lineage == "" || r == nil || b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		return false
	}
	ran := held
	if ran <= 0 && b.StartedAt != nil && b.FinishedAt != nil {
		ran = b.FinishedAt.AsTime().Sub(b.StartedAt.AsTime())
	}
	if ran <= 0 {
		return false
	}
	lc := c.byLineage[lineage]
	if lc == nil {
		if len(c.byLineage) >= maxCostLineages {
			for l := range c.byLineage {
				delete(c.byLineage, l)
				break
			}
		}
		lc = &lineageCost{}
		c.byLineage[lineage] = lc
	}
	warm, cold := r.Steps == 0 || r.CachedSteps > 0, r.Steps == 0 || r.CachedSteps == 0
	if warm {
		lc.warm = average(lc.warm, ran)
	}
	if cold {
		lc.cold = average(lc.cold, ran)
	}
	if warm != cold && lc.warm > 0 && lc.cold > 0 {
		q := float64(lc.warm) / float64(lc.cold)
		if c.ratio == 0 {
			c.ratio = q
		} else {
			c.ratio += costWeight * (q - c.ratio)
		}
	}
	return true
}

// of returns a lineage's expected warm and cold run times (zero: not known).
func (c *costs) of(lineage string) (warm, cold time.Duration) {
	lc := c.byLineage[lineage]
	if lc == nil {
		return 0, 0
	}
	warm, cold = lc.warm, lc.cold
	switch {
	case c.ratio <= 0:
	case warm == 0 && cold > 0:
		warm = time.Duration(float64(cold) * c.ratio)
	case cold == 0 && warm > 0:
		cold = time.Duration(float64(warm) / c.ratio)
	}
	return warm, cold
}

func average(old, sample time.Duration) time.Duration {
	if old <= 0 {
		return sample
	}
	return old + time.Duration(costWeight*float64(sample-old))
}
