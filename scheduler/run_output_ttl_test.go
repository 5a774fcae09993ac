package scheduler

import (
	"flag"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
)

// TestOutputTTLFlag: --output-ttl (the scheduler's and kilnd's) becomes
// the bus limits' OutputTTL, 24 hours unless given.
func TestOutputTTLFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want time.Duration
	}{
		{nil, bus.DefaultOutputTTL},
		{[]string{"--output-ttl", "2h"}, 2 * time.Hour},
	} {
		var o RunOptions
		fs := flag.NewFlagSet("kiln-scheduler", flag.ContinueOnError)
		o.Flags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		if l := o.Limits(); l.OutputTTL != tt.want || l.Replicas != 1 {
			t.Errorf("%v: limits %+v, want OutputTTL %s and 1 replica", tt.args, l, tt.want)
		}
	}
}
