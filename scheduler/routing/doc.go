// Package routing decides which queued builds go to which agents, now: kiln's
// cache-affinity routing as a pure function. It does no I/O, reads no clock,
// starts no goroutines and keeps no global state, so the scheduler calls it on
// every event (a build queued, a pull arrived, a timer fired) and tests,
// fuzzing and bench/routingsim drive it directly.
//
// A decision runs in four steps (README.md draws them):
//
//   - Fairness picks whose build is looked at next: weighted round-robin
//     across tenants (lowest (running+assigned)/weight first), per-tenant
//     concurrency caps, and within a tenant higher Priority, then older
//     QueuedAt, then ID.
//   - Feasibility keeps the agents that carry all of the build's Labels.
//   - Scoring counts the layers each agent can reuse (see [Index] for the
//     formula) through inverted indexes, so only agents holding something
//     the build needs are ever touched.
//   - Placement sends the build to the best-scoring agent with a free slot
//     (Affinity). When every best-scoring agent is busy, the build waits for
//     the one expected to free a slot first or spills to the best agent that
//     is free (Spilled): by cost when its lineage's Warm and Cold run times
//     and that agent's NextFree are known (spill once the expected wait
//     exceeds what the cache miss costs, as in Quincy, Isard et al. 2009),
//     after as long as the miss costs when only the costs are known (ski
//     rental; a lineage whose cache the farm's registry holds has a cheaper
//     miss, its ColdCached standing in for Cold), else after Config.Delay
//     from QueuedAt (delay scheduling, Zaharia et al. 2010). Spills take
//     only the slots left once the builds that can run where their cache is
//     have been placed. A build no agent holds
//     anything for is placed at once by consistent hashing with bounded
//     loads on its lineage (Mirrokni et al. 2018).
//
// [Route] and [NextWake] are the simple entry points. A scheduler that routes
// often keeps an [Index] (the agents' cache summaries, label classes and hash
// ring, updated one agent at a time with [Index.Set]) and calls
// [Index.Decide], which returns the assignments and the next wake-up from a
// single pass.
package routing
