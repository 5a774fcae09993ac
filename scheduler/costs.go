package scheduler

import (
	"slices"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/scheduler/routing"
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
// A lineage whose cache the farm's registry holds (a build of it recorded
// warm_cache_ref: the automatic warm start exported it) is cheaper on a
// cold agent, which imports that cache: coldCached is learnt from the
// builds that imported the lineage's warm ref (BuildResult.
// cache_imported_from holds cacheopt.WarmRef of the build's policy, tenant
// and lineage; the agent imports it only when its engine lacks the
// lineage), which count neither warm nor cold. A lineage without such a
// build borrows the farm's coldCached/cold ratio, and before the farm knows
// one, the midpoint of its warm and cold. The router uses it instead of
// Cold (routing.Build.ColdCached).
//
// What costs knows is rebuilt from the records: the dispatcher observes
// each build that ends under its lease, the warm_cache_ref written after a
// build's finish (the build watch), and, when a leader takes office, the
// newest finished builds (recoverState), so the registry's lineages and
// the estimates survive a failover.
//
// costs belongs to the dispatcher goroutine.
type costs struct {
	byLineage map[string]*lineageCost
	ratio     float64 // warm/cold over the farm; 0 until known
	// cachedRatio is coldCached/cold over the farm; 0 until known.
	cachedRatio float64
}

type lineageCost struct {
	warm, cold, coldCached time.Duration
	// registry: the farm's registry holds the lineage's cache.
	registry bool
}

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
	imported := importedWarmRef(b)
	if ran <= 0 && r.WarmCacheRef == "" && !imported {
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
	changed := false
	if (r.WarmCacheRef != "" || imported) && !lc.registry {
		lc.registry, changed = true, true
	}
	if ran <= 0 {
		return changed
	}
	if imported {
		lc.coldCached = average(lc.coldCached, ran)
		c.learnCachedRatio(lc)
		return true
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
	if cold && !warm {
		c.learnCachedRatio(lc)
	}
	return true
}

// learnCachedRatio moves the farm's coldCached/cold ratio towards lc's,
// when lc knows both.
func (c *costs) learnCachedRatio(lc *lineageCost) {
	if lc.coldCached <= 0 || lc.cold <= 0 {
		return
	}
	q := float64(lc.coldCached) / float64(lc.cold)
	if c.cachedRatio == 0 {
		c.cachedRatio = q
	} else {
		c.cachedRatio += costWeight * (q - c.cachedRatio)
	}
}

// importedWarmRef reports whether b's engine imported its lineage's
// automatic warm start ref: b ran on an agent without the lineage's cache,
// from the registry's.
func importedWarmRef(b *kilnv1.Build) bool {
	prefix, lineage := b.GetPolicy().GetCacheRegistry(), b.GetAffinity().GetLineage()
	if prefix == "" || lineage == "" || len(b.GetResult().GetCacheImportedFrom()) == 0 {
		return false
	}
	return slices.Contains(b.GetResult().GetCacheImportedFrom(), cacheopt.WarmRef(prefix, b.GetTenant(), lineage))
}

// fill sets a queued build's expected run times: Warm and Cold (of), and
// ColdCached when the registry holds its lineage's cache.
func (c *costs) fill(rb *routing.Build) {
	rb.Warm, rb.Cold = c.of(rb.Lineage)
	rb.ColdCached = c.coldCached(rb.Lineage)
}

// coldCached returns a lineage's expected run time on a cold agent that
// imports the registry's cache; zero when the registry does not hold it or
// nothing is known.
func (c *costs) coldCached(lineage string) time.Duration {
	lc := c.byLineage[lineage]
	if lc == nil || !lc.registry {
		return 0
	}
	if lc.coldCached > 0 {
		return lc.coldCached
	}
	warm, cold := c.of(lineage)
	switch {
	case cold <= 0:
		return 0
	case c.cachedRatio > 0:
		return time.Duration(float64(cold) * c.cachedRatio)
	case warm > 0:
		return (warm + cold) / 2
	}
	return 0
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
