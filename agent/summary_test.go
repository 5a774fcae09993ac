package agent

import (
	"fmt"
	"slices"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestCacheSummaryIsRecentFirstAndBounded(t *testing.T) {
	var s CacheSummary
	s.Add(&kilnv1.Affinity{Lineage: "l1", BaseImages: []string{"b1"}, Chain: []string{"c1", "c2"}})
	s.Add(&kilnv1.Affinity{Lineage: "l2", BaseImages: []string{"b1", "b2"}, Chain: []string{"c1", "c3"}})
	s.Add(&kilnv1.Affinity{Lineage: "l1"})
	p := s.Proto()
	if !slices.Equal(p.Lineages, []string{"l1", "l2"}) || !slices.Equal(p.BaseImages, []string{"b2", "b1"}) || !slices.Equal(p.Chains, []string{"c1", "c3", "c2"}) {
		t.Fatalf("summary %v", p)
	}
	for i := range maxSummaryLineages + 10 {
		s.Add(&kilnv1.Affinity{Lineage: fmt.Sprint("x", i)})
	}
	if p := s.Proto(); len(p.Lineages) != maxSummaryLineages || p.Lineages[0] != fmt.Sprint("x", maxSummaryLineages+9) {
		t.Fatalf("bounded summary has %d lineages, first %q", len(p.Lineages), p.Lineages[0])
	}
}
