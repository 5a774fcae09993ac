package routing

import "time"

// Build is a queued build as routing sees it.
type Build struct {
	ID       string
	Tenant   string
	Priority int32 // higher first within a tenant
	// Lineage is the hash of tenant, repository, Dockerfile path and target.
	// An empty lineage matches no agent's history and hashes by ID instead.
	Lineage    string
	BaseImages []string
	// Chain[i] is the hash of the leading instructions 0..i.
	Chain  []string
	Labels map[string]string // required agent labels (all must match)
	// Preferred, when set, is Labels plus labels an agent had better
	// carry (one that builds the platform natively rather than
	// emulated): while an eligible agent carrying them all has a free
	// slot, the build goes to one of those.
	Preferred map[string]string
	// QueuedAt is when the build entered the queue; delay scheduling counts
	// from here.
	QueuedAt time.Time
	// Warm and Cold are how long the build is expected to run on an agent
	// that holds its cache and on one that does not, learnt from its
	// lineage's finished builds (zero: not known). With both known the
	// router weighs waiting for a busy preferred agent against the cost of
	// a cache miss instead of waiting out Config.Delay (see [Index.Decide]).
	Warm, Cold time.Duration
	// ColdCached is how long the build is expected to run on an agent that
	// does not hold its cache but imports it from the farm's registry (the
	// automatic warm start), set only when the lineage's cache is known to
	// be there (zero: not known, or no registry cache). When set it stands
	// in for Cold: a cold agent costs less, so a busy warm one is waited for
	// less, and the explanation says "registry cache".
	ColdCached time.Duration
	// Weight and MaxConcurrent are the tenant's weight and cap as the
	// gateway stamped them into the build (its tenants file's policy);
	// when positive they win over Config.TenantWeights and TenantCaps.
	// The first queued build of a tenant in a decision speaks for it.
	Weight, MaxConcurrent int
}

// cold is how long b is expected to run on an agent that does not hold its
// cache: ColdCached when the farm's registry holds it, else Cold.
func (b *Build) cold() time.Duration {
	if b.ColdCached > 0 {
		return b.ColdCached
	}
	return b.Cold
}

// missCost says what a cache miss costs, for explanations: "a cache miss
// here costs ~2.5s", with the registry cache when ColdCached stood in.
func (b *Build) missCost(miss time.Duration) string {
	s := "a cache miss here costs ~" + roundTo(miss).String()
	if b.ColdCached > 0 {
		s += " with the registry cache"
	}
	return s
}
