package progress

import (
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// cacheEvents is a build that imports a cache, exports one as part of the
// build, finishes, and then reports the automatic warm start's export, the
// first one failed and then one that worked.
func cacheEvents() []*kilnv1.BuildEvent {
	evs := events(1,
		running,
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN true"},
		&kilnv1.StepFinished{Step: 1, Duration: durationpb.New(time.Second)},
		&kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:i", Steps: 1}},
	)
	cache := []*kilnv1.CacheEvent{
		{Kind: kilnv1.CacheEvent_KIND_IMPORT, Ref: "registry:5000/app:cache", Type: "registry"},
		{Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: "registry:5000/app:cache", Type: "registry", Mode: "max", Duration: durationpb.New(2100 * time.Millisecond)},
		{Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: "registry:5000/kiln-cache/t:l", Type: "registry", Mode: "max", Automatic: true, Error: "push refused"},
	}
	at := func(i int, c *kilnv1.CacheEvent, base *kilnv1.BuildEvent) *kilnv1.BuildEvent {
		return &kilnv1.BuildEvent{Sequence: uint64(i), Time: base.Time, BuildId: base.BuildId, Attempt: 1, Event: &kilnv1.BuildEvent_Cache{Cache: c}}
	}
	return []*kilnv1.BuildEvent{evs[0], at(2, cache[0], evs[0]), evs[1], evs[2], at(5, cache[1], evs[2]), evs[3], at(7, cache[2], evs[3])}
}

var cacheWant = []string{
	"#cache importing from registry:5000/app:cache",
	"exported cache to registry:5000/app:cache (mode=max) in 2.1s",
	"warning: automatic cache export to registry:5000/kiln-cache/t:l failed: push refused",
}

func TestCacheEventsPlain(t *testing.T) {
	_, stderr := render(Plain, cacheEvents())
	at := -1
	for _, want := range cacheWant {
		i := strings.Index(stderr, want+"\n")
		if i < 0 || i < at {
			t.Fatalf("plain output lacks %q (in order):\n%s", want, stderr)
		}
		at = i
	}
	if fin := strings.Index(stderr, "succeeded"); fin < 0 || fin > at {
		t.Fatalf("the automatic export is not after the finished line:\n%s", stderr)
	}
}

func TestCacheEventsTTY(t *testing.T) {
	r := newTTYRun(t, 100, 40)
	r.events(cacheEvents())
	r.p.Close()
	got := r.text()
	for _, want := range cacheWant {
		if !strings.Contains(got, want) {
			t.Fatalf("tty screen lacks %q:\n%s", want, got)
		}
	}
	if !strings.HasSuffix(got, cacheWant[2]) {
		t.Fatalf("the automatic export's warning is not under the summary:\n%s", got)
	}
}

func TestCacheEventsJSON(t *testing.T) {
	stdout, _ := render(JSON, cacheEvents())
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 7 || !strings.Contains(lines[6], `"automatic":true`) || !strings.Contains(lines[6], `"error":"push refused"`) || !strings.Contains(lines[4], `"mode":"max"`) {
		t.Fatalf("json lines:\n%s", stdout)
	}
}

func TestCacheEventsRawJSON(t *testing.T) {
	stdout, _ := render(RawJSON, cacheEvents())
	var logs []string
	for _, st := range decodeRaw(t, stdout) {
		for _, l := range st.Logs {
			logs = append(logs, strings.TrimSpace(string(l.Data)))
		}
	}
	for _, want := range cacheWant {
		found := false
		for _, l := range logs {
			found = found || l == want
		}
		if !found {
			t.Fatalf("rawjson logs lack %q: %q", want, logs)
		}
	}
}
