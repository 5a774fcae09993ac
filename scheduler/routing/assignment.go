package routing

import "time"

// Assignment sends one queued build to one agent.
type Assignment struct {
	Build, Agent string
	// Score is the build's cache score on Agent: the layers it can expect to
	// reuse there, plus the warm-engine bonuses (see [Index]).
	Score int
	// BestScore is the best score any eligible agent had, busy or not.
	BestScore int
	Reason    Reason
	// Expected is how long the build is expected to run on Agent: its
	// Warm if Agent holds its cache, else its Cold (zero: not known). The
	// caller derives the agent's NextFree from it.
	Expected time.Duration
	// Explanation says it for a person, e.g.
	// `cache score 6 (lineage, base image, 4 of 6 instructions)`,
	// `spilled after 2s: preferred agent "a" busy (cache score 6 there, 1 here)`,
	// `spilled after 40ms: preferred agent "a" busy for ~3.1s more, a cache
	// miss here costs ~2.2s (cache score 6 there, 0 here)`,
	// `no cache history: lineage hashes to "b"`.
	Explanation string
}

// Decision is the outcome of one routing pass.
type Decision struct {
	// Assignments in the order they were made (fairness order).
	Assignments []Assignment
	// Wake is the earliest time at which a held build may spill (zero if
	// none is held): when to route again if nothing else happens first.
	Wake time.Time
}
