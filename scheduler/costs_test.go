package scheduler

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
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
