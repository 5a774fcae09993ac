package routing

import "strconv"

// Reason says why a build went to the agent it went to.
type Reason int

const (
	// Affinity: a best-scoring agent (most reusable layers) had a free slot.
	Affinity Reason = iota + 1
	// Spilled: every best-scoring agent was busy, and waiting was expected
	// to cost more than the cache miss, or lasted as long as the miss costs
	// (the lineage's costs known), or lasted Config.Delay (not known), so
	// the build went to the best agent that was free.
	Spilled
	// Hashed: no eligible agent holds anything the build needs; consistent
	// hashing with bounded loads on the lineage chose a free agent.
	Hashed
)

// String is the reason's name, as used in explanations, logs and metrics.
func (r Reason) String() string {
	switch r {
	case Affinity:
		return "affinity"
	case Spilled:
		return "spilled"
	case Hashed:
		return "hashed"
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}
