package engine_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestBuildKitCountsEveryStepOfALongStage builds, on the real engine, two
// stages of thirteen and ten instructions — where BuildKit pads the step
// positions ("[ 1/13]", "[stage-1  1/10]") — and checks that every
// instruction is a numbered, finished, counted step.
//
// Other tests build FROM the same image at the same time: BuildKit then
// shares the FROM vertex and may report it under another build's name
// ("[1/2] FROM …", moby/buildkit#2820), before it names this build's other
// instructions. The FROM step's total is then that guess; every later
// step's is this build's own.
func TestBuildKitCountsEveryStepOfALongStage(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	var df strings.Builder
	fmt.Fprintf(&df, "FROM %s AS builder\n", base)
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&df, "RUN echo %s-%d > /f%d\n", n, i, i)
	}
	fmt.Fprintf(&df, "FROM %s\n", base)
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&df, "RUN echo %s-final-%d > /g%d\n", n, i, i)
	}
	df.WriteString("COPY --from=builder /f12 /f12\n")
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": df.String()})
	tag := "kiln-test/engine-padded:" + n
	var res engine.BuildKitResult
	removeImages(t, c, &res.ImageID)

	var r recorder
	res, err := d.BuildKit(t.Context(), engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{tag}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
	}, &r)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	// 13 instructions in the builder stage, 10 in the final one; both
	// stages start FROM the same image, which BuildKit solves as one vertex,
	// so 22 steps, of which Steps counts all but the FROM.
	if len(r.started) != 22 || len(r.finished) != 22 {
		t.Fatalf("%d steps started and %d finished, want 22 each; started:\n%s\nlog:\n%s",
			len(r.started), len(r.finished), strings.Join(r.started, "\n"), strings.Join(r.logs, "\n"))
	}
	if res.Steps != 21 || res.CachedSteps != 0 {
		t.Fatalf("%d steps, %d cached; want 21, 0", res.Steps, res.CachedSteps)
	}
	started := strings.Join(r.started, "\n") + "\n"
	for i := 1; i <= 12; i++ {
		if want := fmt.Sprintf("/23 RUN echo %s-%d > /f%d\n", n, i, i); !strings.Contains(started, want) {
			t.Fatalf("no step %q; started:\n%s", want, started)
		}
	}
	for i, s := range r.started {
		want := fmt.Sprintf("%d/23 ", i+1)
		if i == 0 && strings.HasPrefix(s, "1/") && strings.Contains(s, " FROM "+base) {
			continue // the shared FROM's total may be from another build's name
		}
		if !strings.HasPrefix(s, want) {
			t.Fatalf("step %d started as %q, want %q…; started:\n%s", i+1, s, want, started)
		}
	}
	for _, l := range r.logs {
		if strings.HasPrefix(l, "0: [") && (strings.Contains(l, "/13]") || strings.Contains(l, "/10]")) {
			t.Fatalf("an instruction was logged as a vertex, not a step: %q", l)
		}
	}
}
