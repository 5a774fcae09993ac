package engine_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// loudBuild builds, with BuildKit on engine e, a step printing the numbers
// 1 to n, and returns what the reporter heard.
func loudBuild(t *testing.T, e *enginetest.Engine, n int) *recorder {
	t.Helper()
	d, err := engine.NewDocker(e.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN seq 1 %d\n", enginetest.BusyboxBase(t), n)})
	var r recorder
	if _, err := d.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + nonce()}, &r); err != nil {
		t.Fatalf("build: %v", err)
	}
	return &r
}

// TestBuildKitKeepsALoudStepOnTheEnginesKilnStarts: BuildKit's defaults
// would keep about 200 KiB of a step printing 1.3 MB at once; an engine
// started with engine.StepLogEnv (as enginetest, localfarm and dev-env
// start theirs) passes on every line, in order, and reports no clipping.
func TestBuildKitKeepsALoudStepOnTheEnginesKilnStarts(t *testing.T) {
	t.Parallel()
	const n = 200000
	r := loudBuild(t, enginetest.StartEngine(t, "loud"), n)
	next := 1
	for _, l := range r.logs {
		if l == "2: "+strconv.Itoa(next) {
			next++
		}
	}
	if next != n+1 || len(r.clipped) != 0 {
		t.Fatalf("the step's lines reached %d of %d in order; clipped: %q; log tail:\n%s", next-1, n, r.clipped, tail(r.logs, 10))
	}
}

// TestBuildKitReportsClippedOutput: an engine whose BuildKit keeps 4 KiB
// of a step's output clips a step printing 24 KB, and the reporter hears
// of it with the limit as the engine names it.
func TestBuildKitReportsClippedOutput(t *testing.T) {
	t.Parallel()
	r := loudBuild(t, enginetest.StartEngineWithEnv(t, "clipping", engine.StepLogMaxSizeEnv+"=4096"), 5000)
	if len(r.clipped) != 1 || r.clipped[0] != "2: 4KiB" {
		t.Fatalf("clipped %q, want [\"2: 4KiB\"]; log tail:\n%s", r.clipped, tail(r.logs, 10))
	}
	if !strings.Contains(strings.Join(r.logs, "\n"), "2: [output clipped, log limit 4KiB reached]") {
		t.Fatalf("the engine's notice is not in the log; tail:\n%s", tail(r.logs, 10))
	}
}

func tail(lines []string, n int) string {
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
