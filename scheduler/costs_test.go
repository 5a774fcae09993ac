package scheduler

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/scheduler/routing"
)

func finishedBuild(lineage string, ran time.Duration, steps, cached uint32) *kilnv1.Build {
	start := time.Unix(1_700_000_000, 0)
	return &kilnv1.Build{
		State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Affinity: &kilnv1.Affinity{Lineage: lineage},
		StartedAt: timestamppb.New(start), FinishedAt: timestamppb.New(start.Add(ran)),
		Result: &kilnv1.BuildResult{Steps: steps, CachedSteps: cached},
	}
}

func TestCosts(t *testing.T) {
	type want struct {
		lineage    string
		warm, cold time.Duration
	}
	for _, tc := range []struct {
		name     string
		observed []*kilnv1.Build
		want     []want
	}{
		{name: "nothing known", want: []want{{"L", 0, 0}}},
		{
			name:     "cold then warm",
			observed: []*kilnv1.Build{finishedBuild("L", 4*time.Second, 2, 0), finishedBuild("L", time.Second, 2, 1)},
			want:     []want{{"L", time.Second, 4 * time.Second}},
		},
		{
			name:     "moving average gives the newest build 0.3",
			observed: []*kilnv1.Build{finishedBuild("L", 4*time.Second, 2, 0), finishedBuild("L", 2*time.Second, 2, 0)},
			want:     []want{{"L", 0, 3400 * time.Millisecond}},
		},
		{
			name:     "no steps to cache: both",
			observed: []*kilnv1.Build{finishedBuild("L", 100*time.Millisecond, 0, 0)},
			want:     []want{{"L", 100 * time.Millisecond, 100 * time.Millisecond}},
		},
		{
			name: "a lineage known only cold borrows the farm's warm/cold ratio",
			observed: []*kilnv1.Build{
				finishedBuild("A", 4*time.Second, 2, 0), finishedBuild("A", time.Second, 2, 1), // ratio 1/4
				finishedBuild("B", 8*time.Second, 3, 0),
				finishedBuild("C", 3*time.Second, 3, 2),
			},
			want: []want{{"B", 2 * time.Second, 8 * time.Second}, {"C", 3 * time.Second, 12 * time.Second}},
		},
		{
			name: "failed, unfinished or lineage-less builds teach nothing",
			observed: []*kilnv1.Build{
				func() *kilnv1.Build {
					b := finishedBuild("L", time.Second, 2, 0)
					b.State = kilnv1.BuildState_BUILD_STATE_FAILED
					return b
				}(),
				func() *kilnv1.Build { b := finishedBuild("L", time.Second, 2, 0); b.FinishedAt = nil; return b }(),
				finishedBuild("", time.Second, 2, 0),
			},
			want: []want{{"L", 0, 0}, {"", 0, 0}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCosts()
			for _, b := range tc.observed {
				c.observe(b, 0)
			}
			for _, w := range tc.want {
				if warm, cold := c.of(w.lineage); warm != w.warm || cold != w.cold {
					t.Errorf("%q: warm %v cold %v, want %v %v", w.lineage, warm, cold, w.warm, w.cold)
				}
			}
		})
	}
}

// TestCostsCountTheSlotHeld: the time from the assignment to the end, as
// the dispatcher saw it, counts over the record's running time.
func TestCostsCountTheSlotHeld(t *testing.T) {
	c := newCosts()
	c.observe(finishedBuild("L", 4*time.Second, 2, 0), 5*time.Second)
	if warm, cold := c.of("L"); warm != 0 || cold != 5*time.Second {
		t.Errorf("warm %v cold %v, want 0 and 5s", warm, cold)
	}
}

// TestCostsWithARegistryCache: a lineage whose cache the registry holds
// gets a ColdCached estimate — from its builds that imported the warm ref,
// else the farm's coldCached/cold ratio, else the midpoint of its warm and
// cold; a lineage the registry does not hold gets none. Builds that
// imported the warm ref count neither warm nor cold.
func TestCostsWithARegistryCache(t *testing.T) {
	const prefix = "registry:5000/kiln-cache"
	imported := func(lineage string, ran time.Duration) *kilnv1.Build {
		b := finishedBuild(lineage, ran, 3, 3)
		b.Tenant, b.Policy = "t", &kilnv1.TenantPolicy{CacheRegistry: prefix}
		b.Result.CacheImportedFrom = []string{"registry:5000/app:cache", cacheopt.WarmRef(prefix, "t", lineage)}
		return b
	}
	exported := func(lineage string) *kilnv1.Build {
		return warmCacheOnly(&kilnv1.Build{Id: "x", State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Affinity: &kilnv1.Affinity{Lineage: lineage},
			Result: &kilnv1.BuildResult{WarmCacheRef: cacheopt.WarmRef(prefix, "t", lineage)}, StartedAt: timestamppb.Now(), FinishedAt: timestamppb.Now()})
	}
	userCacheOnly := func() *kilnv1.Build {
		b := finishedBuild("U", time.Second, 3, 3)
		b.Result.CacheImportedFrom = []string{"registry:5000/app:cache"}
		return b
	}
	type want struct {
		lineage                string
		warm, cold, coldCached time.Duration
	}
	for _, tc := range []struct {
		name     string
		observed []*kilnv1.Build
		want     []want
	}{
		{
			name:     "no registry cache: none",
			observed: []*kilnv1.Build{finishedBuild("L", 8*time.Second, 2, 0), finishedBuild("L", time.Second, 2, 1)},
			want:     []want{{"L", time.Second, 8 * time.Second, 0}},
		},
		{
			name:     "exported, nothing imported yet: the midpoint",
			observed: []*kilnv1.Build{finishedBuild("L", 8*time.Second, 2, 0), finishedBuild("L", time.Second, 2, 1), exported("L")},
			want:     []want{{"L", time.Second, 8 * time.Second, 4500 * time.Millisecond}},
		},
		{
			name:     "learnt from a build that imported the warm ref, which is neither warm nor cold",
			observed: []*kilnv1.Build{finishedBuild("L", 8*time.Second, 2, 0), finishedBuild("L", time.Second, 2, 1), imported("L", 3*time.Second)},
			want:     []want{{"L", time.Second, 8 * time.Second, 3 * time.Second}},
		},
		{
			name: "a lineage without an import borrows the farm's ratio",
			observed: []*kilnv1.Build{
				finishedBuild("A", 8*time.Second, 2, 0), imported("A", 2*time.Second), // ratio 1/4
				finishedBuild("B", 12*time.Second, 2, 0), exported("B"),
			},
			want: []want{{"B", 0, 12 * time.Second, 3 * time.Second}},
		},
		{
			name:     "the record of the export alone counts no run",
			observed: []*kilnv1.Build{finishedBuild("L", 8*time.Second, 2, 0), exported("L"), exported("L")},
			want:     []want{{"L", 0, 8 * time.Second, 0}},
		},
		{
			name:     "a --cache-from of the user's own is no registry warm start",
			observed: []*kilnv1.Build{userCacheOnly()},
			want:     []want{{"U", time.Second, 0, 0}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCosts()
			for _, b := range tc.observed {
				c.observe(b, 0)
			}
			for _, w := range tc.want {
				rb := routing.Build{Lineage: w.lineage}
				c.fill(&rb)
				if rb.Warm != w.warm || rb.Cold != w.cold || rb.ColdCached != w.coldCached {
					t.Errorf("%q: warm %v cold %v cold cached %v, want %v %v %v", w.lineage, rb.Warm, rb.Cold, rb.ColdCached, w.warm, w.cold, w.coldCached)
				}
			}
		})
	}
}
