package routing

import "time"

// Agent is an agent as routing sees it. Names must be unique: routing breaks
// ties by name, never by the order agents are given in.
type Agent struct {
	Name      string
	FreeSlots int // pulls it has waiting right now (0 = busy)
	Slots     int // capacity
	Running   int // builds it runs now (for bounded loads and tie-breaks)
	// NextFree is when a busy agent is expected to free a slot: the
	// earliest expected end of the builds it runs (zero: not known).
	NextFree time.Time
	Labels   map[string]string
	// The cache summary, most recent first, bounded by the agent. Empty
	// strings are ignored.
	Lineages   []string
	BaseImages []string
	Chains     []string
}
