package routing

import "time"

// Config tunes the router. The zero Config is usable: 2s delay, every tenant
// weight 1, no caps, load factor 1.25.
type Config struct {
	// Delay is how long a build waits, from QueuedAt, for a busy preferred
	// agent before it spills to another, when its lineage's costs do not
	// decide (default 2s; negative: never wait). See [Index.Decide].
	Delay time.Duration
	// TenantWeights weights the round-robin across tenants (absent or
	// non-positive: 1).
	TenantWeights map[string]int
	// TenantCaps caps how many builds of a tenant run or are assigned at once
	// (absent or non-positive: DefaultCap).
	TenantCaps map[string]int
	// DefaultCap is the cap of tenants without one (non-positive: unlimited).
	DefaultCap int
	// LoadFactor is c in consistent hashing with bounded loads: an agent takes
	// a hashed build only while its load is below ceil(c·(total load+1)/n)
	// (default 1.25; values below 1 count as 1).
	LoadFactor float64
}

// Defaults for zero Config fields.
const (
	DefaultDelay      = 2 * time.Second
	DefaultLoadFactor = 1.25
)

func (c Config) delay() time.Duration {
	switch {
	case c.Delay == 0:
		return DefaultDelay
	case c.Delay < 0:
		return 0
	}
	return c.Delay
}

func (c Config) loadFactor() float64 {
	switch {
	case c.LoadFactor <= 0 || c.LoadFactor != c.LoadFactor: // zero, negative or NaN
		return DefaultLoadFactor
	case c.LoadFactor < 1:
		return 1
	}
	return c.LoadFactor
}

func (c Config) weight(tenant string) int64 {
	if w := c.TenantWeights[tenant]; w > 0 {
		return int64(w)
	}
	return 1
}

// limit is the tenant's cap, 0 for unlimited.
func (c Config) limit(tenant string) int64 {
	if n := c.TenantCaps[tenant]; n > 0 {
		return int64(n)
	}
	if c.DefaultCap > 0 {
		return int64(c.DefaultCap)
	}
	return 0
}
