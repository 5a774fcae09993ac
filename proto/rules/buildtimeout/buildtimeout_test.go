package buildtimeout

import (
	"errors"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		d  time.Duration
		ok bool
	}{
		{time.Nanosecond, true},
		{10 * time.Minute, true},
		{Max, true},
		{0, false},
		{-time.Second, false},
		{Max + time.Nanosecond, false},
	} {
		err := Check(tc.d)
		if (err == nil) != tc.ok {
			t.Errorf("Check(%s) = %v, want ok %v", tc.d, err, tc.ok)
		}
		if err != nil && !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Check(%s) = %v, does not match rules.ErrInvalid", tc.d, err)
		}
	}
	if got := Message(10 * time.Minute); got != "timed out after 10m0s" {
		t.Errorf("Message = %q", got)
	}
}
