package agent

import (
	"strings"
	"testing"
	"time"
)

func TestEngineClipsWarnOncePerSettingUntilReset(t *testing.T) {
	var c engineClips
	if w := c.warnings(); len(w) != 0 {
		t.Fatalf("warnings before any clip: %q", w)
	}
	at := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	c.note("b1", "200KiB/s", at)
	c.note("b2", "200KiB/s", at.Add(time.Minute))
	c.note("b3", "2MiB", at)
	w := c.warnings()
	if len(w) != 2 {
		t.Fatalf("warnings %q, want one per setting", w)
	}
	for _, want := range []string{"build b3 at BuildKit's step log limit 2MiB", "BUILDKIT_STEP_LOG_MAX_SIZE=1073741824"} {
		if !strings.Contains(w[0], want) {
			t.Errorf("warning %q lacks %q", w[0], want)
		}
	}
	for _, want := range []string{"build b2 at BuildKit's step log limit 200KiB/s (2026-12-06T22:01:00Z)", "BUILDKIT_STEP_LOG_MAX_SPEED=1073741824"} {
		if !strings.Contains(w[1], want) {
			t.Errorf("warning %q lacks %q", w[1], want)
		}
	}
	c.reset()
	if w := c.warnings(); len(w) != 0 {
		t.Fatalf("warnings after the engine restarted: %q", w)
	}
}

func TestClipLineNamesTheSetting(t *testing.T) {
	l := clipLine("a1", "200KiB/s")
	for _, want := range []string{`agent "a1"`, "(200KiB/s)", "BUILDKIT_STEP_LOG_MAX_SPEED=1073741824"} {
		if !strings.Contains(l, want) {
			t.Errorf("line %q lacks %q", l, want)
		}
	}
	if strings.HasPrefix(l, "kiln: ") {
		t.Errorf("line %q would be hidden as a farm bookkeeping line", l)
	}
}
