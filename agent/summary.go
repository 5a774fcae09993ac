package agent

import (
	"slices"
	"sync"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Bounds of the cache summary an agent advertises.
const (
	maxSummaryLineages = 128
	maxSummaryBases    = 64
	maxSummaryChains   = 2048
)

// CacheSummary remembers, most recent first and bounded, what an agent's
// engine holds layers for: the lineages, base images and instruction
// chains of the builds it ran. The zero value is empty and ready; safe for
// concurrent use.
type CacheSummary struct {
	mu       sync.Mutex
	lineages []string
	bases    []string
	chains   []string
}

// Add records a finished build's affinity.
func (s *CacheSummary) Add(a *kilnv1.Affinity) {
	if a == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.Lineage != "" {
		s.lineages = pushFront(s.lineages, maxSummaryLineages, a.Lineage)
	}
	for _, b := range a.BaseImages {
		s.bases = pushFront(s.bases, maxSummaryBases, b)
	}
	for i := len(a.Chain) - 1; i >= 0; i-- {
		s.chains = pushFront(s.chains, maxSummaryChains, a.Chain[i])
	}
}

// HasLineage reports whether the summary holds lineage.
func (s *CacheSummary) HasLineage(lineage string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.lineages, lineage)
}

// Proto returns the summary for the heartbeat.
func (s *CacheSummary) Proto() *kilnv1.CacheSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &kilnv1.CacheSummary{Lineages: slices.Clone(s.lineages), BaseImages: slices.Clone(s.bases), Chains: slices.Clone(s.chains)}
}

// pushFront moves v to the front of xs, keeping at most max entries.
func pushFront(xs []string, max int, v string) []string {
	if i := slices.Index(xs, v); i >= 0 {
		xs = slices.Delete(xs, i, i+1)
	}
	xs = slices.Insert(xs, 0, v)
	if len(xs) > max {
		xs = xs[:max]
	}
	return xs
}
