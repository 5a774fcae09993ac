package buildstore

import (
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestAllowed(t *testing.T) {
	const (
		q = kilnv1.BuildState_BUILD_STATE_QUEUED
		a = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		r = kilnv1.BuildState_BUILD_STATE_RUNNING
		s = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		f = kilnv1.BuildState_BUILD_STATE_FAILED
		c = kilnv1.BuildState_BUILD_STATE_CANCELLED
	)
	tests := []struct {
		from, to kilnv1.BuildState
		want     bool
	}{
		{q, a, true}, {a, r, true}, {r, s, true}, {r, f, true}, {r, c, true},
		{q, c, true}, {a, q, true}, {r, q, true}, {r, r, true},
		{q, r, false}, {q, s, false}, {a, s, false},
		{s, q, false}, {f, r, false}, {c, q, false}, {s, s, false},
	}
	for _, tc := range tests {
		t.Run(tc.from.String()+"→"+tc.to.String(), func(t *testing.T) {
			if got := Allowed(tc.from, tc.to); got != tc.want {
				t.Fatalf("Allowed(%s, %s) = %v, want %v", tc.from, tc.to, got, tc.want)
			}
		})
	}
}

func TestNewIDSortsByTimeAndValidates(t *testing.T) {
	now := time.Now()
	a, b := NewID(now), NewID(now.Add(time.Millisecond))
	if !(a < b) {
		t.Fatalf("ids do not sort by time: %s !< %s", a, b)
	}
	if !ValidID(a) || !ValidID(b) {
		t.Fatalf("NewID produced an invalid id: %s %s", a, b)
	}
	for _, bad := range []string{"", "b", "x" + a[1:], a + "0", a[:26] + "A", a[:26] + ">", "b../../../../../../../../x"} {
		if ValidID(bad) {
			t.Fatalf("ValidID(%q) = true", bad)
		}
	}
}
