package tests

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/deploy/local/localfarm"
)

// TestCLIOnLocalFarm runs the CLI against a farm of separate processes
// (one gateway), so the test can restart the gateway and freeze the agent
// while `kiln build` follows a build.
func TestCLIOnLocalFarm(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	f := startLocalFarm(t, ctx, localfarm.Options{NATS: 1, Gateways: 1, Schedulers: 1, Agents: 1, Images: []string{base}})
	t.Run("gateway restart", func(t *testing.T) { testCLIGatewayRestart(t, ctx, f, base) })
	t.Run("second interrupt detaches", func(t *testing.T) { testCLISecondInterruptDetaches(t, ctx, f, base) })
}

// testCLIGatewayRestart restarts the farm's only gateway while `kiln build
// --progress plain` streams a build's log: the CLI rides out the restart,
// exits 0, and what it printed from the build's events is exactly the
// build's whole log as `kiln logs` replays it — no line missing, none twice.
func testCLIGatewayRestart(t *testing.T, ctx context.Context, f *localFarm, base string) {
	const lines = 40
	gw := f.named("gateway")[0]
	marker := "restart-" + uniq()
	p := startKiln(t, ctx, gw.Addr, "build", "--progress", "plain", slowBuild(t, base, marker, lines))
	p.waitPrinted(t, ctx, 3*time.Minute, regexp.MustCompile("^"+marker+"-3$"))
	if err := f.Restart(ctx, gw.Name); err != nil {
		t.Fatalf("restart %s: %v", gw.Name, err)
	}
	restartedAt := len(p.stderrLines())
	r := p.wait(t, ctx)
	if r.code != 0 {
		t.Fatalf("kiln build exited %d after the gateway restart (at line %d): %s", r.code, restartedAt, r)
	}
	id := buildIDOf(t, p.stderrLines())
	l := kiln(t, gw.Addr, "logs", id)
	if l.code != 0 {
		t.Fatalf("kiln logs %s: %s", id, l)
	}
	built, replayed := eventLines(r.stderr), strings.Split(strings.TrimRight(l.stderr, "\n"), "\n")
	if !slices.Equal(built, replayed) {
		t.Fatalf("through the restart (after line %d), kiln build printed\n%s\n\nthe build's whole log (kiln logs) is\n%s", restartedAt, strings.Join(built, "\n"), l.stderr)
	}
	for i := 1; i <= lines; i++ {
		if n := strings.Count(l.stderr, fmt.Sprintf("\n%s-%d\n", marker, i)); n != 1 {
			t.Fatalf("the log holds %s-%d %d times, want once:\n%s", marker, i, n, l.stderr)
		}
	}
	t.Logf("build %s: kiln build printed its %d-line log whole through the restart of %s after line %d", id, len(built), gw.Name, restartedAt)
}

// testCLISecondInterruptDetaches interrupts `kiln build` twice: the first
// asks the farm to cancel the build, the second stops following — exit
// 130 and a re-attach hint — and `kiln logs -f` re-attaches to the build
// and follows it to its end. The agent is frozen (SIGSTOP) between the two
// interrupts so that the build cannot end before the second.
func testCLISecondInterruptDetaches(t *testing.T, ctx context.Context, f *localFarm, base string) {
	gw := f.named("gateway")[0]
	agent := f.named("agent")[0]
	marker := "detach-" + uniq()
	p := startKiln(t, ctx, gw.Addr, "build", "--progress", "plain", slowBuild(t, base, marker, 600))
	p.waitPrinted(t, ctx, 3*time.Minute, regexp.MustCompile("^"+marker+"-3$"))
	id := buildIDOf(t, p.stderrLines())

	if err := syscall.Kill(agent.PID, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", agent.Name, err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(agent.PID, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT %s: %v", agent.Name, err)
			}
		}
	}
	defer resume()
	p.interrupt(t)
	p.waitPrinted(t, ctx, time.Minute, regexp.MustCompile("^kiln: cancelling build "+id))
	// The gateway records the request before the agent hears of it.
	if _, err := waitUntil(ctx, time.Minute, "the farm to record the cancel request", func() bool {
		return inspectBuild(t, gw.Addr, id)["cancelRequested"] == true
	}); err != nil {
		t.Fatal(err)
	}
	p.interrupt(t)
	r := p.wait(t, ctx)
	if r.code != 130 {
		t.Fatalf("kiln build after two SIGINTs: want exit 130: %s", r)
	}
	hint := "re-attach with: kiln logs -f " + id
	mustContain(t, r.stderr, hint, "kiln build's output after the second SIGINT")

	follow := startKiln(t, ctx, gw.Addr, "logs", "-f", id)
	follow.waitPrinted(t, ctx, time.Minute, regexp.MustCompile("^"+marker+"-3$"))
	resume()
	l := follow.wait(t, ctx)
	if l.code != 1 || !strings.Contains(l.stderr, "kiln: build "+id+" cancelled") {
		t.Fatalf("kiln logs -f %s after the detach: want the build followed to its cancellation (exit 1): %s", id, l)
	}
	waitState(t, ctx, gw.Addr, id, "BUILD_STATE_CANCELLED")
}
