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
	// QueuedAt is when the build entered the queue; delay scheduling counts
	// from here.
	QueuedAt time.Time
	// Warm and Cold are how long the build is expected to run on an agent
	// that holds its cache and on one that does not, learnt from its
	// lineage's finished builds (zero: not known). With both known the
	// router weighs waiting for a busy preferred agent against the cost of
	// a cache miss instead of waiting out Config.Delay (see [Index.Decide]).
	Warm, Cold time.Duration
	// Weight and MaxConcurrent are the tenant's weight and cap as the
	// gateway stamped them into the build (its tenants file's policy);
	// when positive they win over Config.TenantWeights and TenantCaps.
	// The first queued build of a tenant in a decision speaks for it.
	Weight, MaxConcurrent int
}
