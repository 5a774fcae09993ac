package tests

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// The fault tests run a farm of separate processes (see faultfarm_test.go), each
// agent on a Docker engine of its own, and break one part of it mid-build:
// an agent killed or frozen, a build whose agents keep dying, cancellation,
// the scheduler or NATS restarted. Leases are 3s so lapses come quickly.

const (
	succeeded = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
	failed    = kilnv1.BuildState_BUILD_STATE_FAILED
	cancelled = kilnv1.BuildState_BUILD_STATE_CANCELLED
	running   = kilnv1.BuildState_BUILD_STATE_RUNNING
	assigned  = kilnv1.BuildState_BUILD_STATE_ASSIGNED
)

// otherOf returns the name in names that is not name.
func otherOf(names []string, name string) string {
	for _, n := range names {
		if n != name {
			return n
		}
	}
	return ""
}

// exactlyOneFinished checks that a build's raw event log holds one finished
// event, and returns it.
func exactlyOneFinished(t *testing.T, f *faultFarm, id string) *kilnv1.BuildEvent {
	t.Helper()
	log := f.eventLog(t, id)
	fins := finishedEvents(log)
	if len(fins) != 1 {
		t.Fatalf("build %s has %d finished events in its log, want 1:\n%s", id, len(fins), eventsString(log))
	}
	return fins[0]
}

// TestFaultAgentKilledMidBuild kills the agent running a build in the
// middle of a RUN: the lease lapses, the build goes to the other agent and
// succeeds there at attempt 2, and the killed agent's engine is left with no
// container of it. The agents have two slots (kiln-agent's default), so the
// killed agent dies with a pull still waiting at the scheduler: the build
// must not be handed to that dead pull and burn an attempt.
func TestFaultAgentKilledMidBuild(t *testing.T) {
	engines := enginetest.StartEngines(t, "kill1", "kill2")
	names := []string{"kill-a", "kill-b"}
	byAgent := map[string]*enginetest.Engine{names[0]: engines[0], names[1]: engines[1]}
	f := startFaultFarm(t, faultFarmOptions{slots: 2}, engines, names...)

	n := uniq()
	id := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo started-%s && sleep 4 && echo done-%s\n", f.base, n, n), nil)
	w := f.watch(t, id)
	run := w.waitEvent(t, time.Minute, "attempt 1 running", isState(running, 1))
	victim := run.GetState().Agent
	w.waitEvent(t, time.Minute, "the RUN step's first line", isLog("started-"+n))
	f.agents[victim].kill(t)
	killed := time.Now()

	fin := w.finished(t, 2*time.Minute)
	t.Logf("build finished %v after agent %s was killed", time.Since(killed).Round(time.Millisecond), victim)
	want := otherOf(names, victim)
	if fin.State != succeeded || fin.Agent != want {
		t.Fatalf("build finished %s on %q, want SUCCEEDED on %q: %v", fin.State, fin.Agent, want, fin)
	}
	b := f.get(t, id)
	if b.State != succeeded || b.Attempt != 2 || b.Agent != want {
		var states []*kilnv1.BuildEvent
		for _, ev := range f.eventLog(t, id) {
			if ev.GetState() != nil {
				states = append(states, ev)
			}
		}
		t.Fatalf("record is %s attempt %d on %q, want SUCCEEDED attempt 2 on %q; state changes:\n%s", b.State, b.Attempt, b.Agent, want, eventsString(states))
	}
	if ev := exactlyOneFinished(t, f, id); ev.Attempt != 2 || ev.GetFinished().State != succeeded {
		t.Fatalf("the finished event is %v, want SUCCEEDED at attempt 2", ev)
	}
	// The engine ends the build of an agent whose connection dropped.
	waitFor(t, 30*time.Second, "the killed agent's build container to go", func() bool {
		return len(containersMentioning(t, byAgent[victim], "started-"+n)) == 0
	})
}

// TestFaultStoppedAgentResultRefused freezes (SIGSTOP) the agent running a
// build that pushes a tag, until its lease lapses and the other agent has
// built and pushed the build as attempt 2; then it resumes the frozen agent.
// Its late attempt must change neither the record nor the tag in the
// registry. The RUN writes the build container's hostname, so the two
// attempts make different images and a late push would show. One slot per
// agent: the frozen agent has no pull waiting (TestFaultAgentKilledMidBuild
// covers that case).
func TestFaultStoppedAgentResultRefused(t *testing.T) {
	engines := enginetest.StartEngines(t, "stop1", "stop2")
	names := []string{"stop-a", "stop-b"}
	f := startFaultFarm(t, faultFarmOptions{}, engines, names...)
	reg := enginetest.Registry(t)

	n := uniq()
	repo, tagName := "kiln-e2e/fault-stop", n
	tag := reg + "/" + repo + ":" + tagName
	id := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo started-%s && sleep 3 && hostname > /built-on\n", f.base, n),
		&kilnv1.BuildSpec{Tags: []string{tag}, Push: true})
	w := f.watch(t, id)
	victim := w.waitEvent(t, time.Minute, "attempt 1 running", isState(running, 1)).GetState().Agent
	w.waitEvent(t, time.Minute, "the RUN step's first line", isLog("started-"+n))
	p := f.agents[victim]
	p.signal(t, syscall.SIGSTOP)
	stopped := time.Now()

	fin := w.finished(t, 2*time.Minute)
	want := otherOf(names, victim)
	if fin.State != succeeded || fin.Agent != want {
		p.signal(t, syscall.SIGCONT)
		t.Fatalf("build finished %s on %q while %q was stopped, want SUCCEEDED on %q: %v", fin.State, fin.Agent, victim, want, fin)
	}
	t.Logf("attempt 2 finished %v after agent %s was stopped", time.Since(stopped).Round(time.Millisecond), victim)
	p.signal(t, syscall.SIGCONT)
	line := p.waitLog(t, time.Minute, "the resumed agent giving the build up", func(line string) bool {
		return strings.Contains(line, id) &&
			(strings.Contains(line, "result refused") || strings.Contains(line, "build abandoned"))
	})
	t.Logf("resumed agent: %s", line)

	b := f.get(t, id)
	if b.State != succeeded || b.Attempt != 2 || b.Agent != want {
		t.Fatalf("record is %s attempt %d on %q, want SUCCEEDED attempt 2 on %q", b.State, b.Attempt, b.Agent, want)
	}
	if len(b.GetResult().GetPushed()) != 1 {
		t.Fatalf("record pushed %v, want one tag", b.GetResult().GetPushed())
	}
	if got, rec := enginetest.ManifestDigest(t, reg, repo, tagName), b.Result.Pushed[0].Digest; got != rec {
		t.Fatalf("registry has %s for %s, the record says attempt 2 pushed %s: the stopped agent overwrote the tag", got, tag, rec)
	}
	if ev := exactlyOneFinished(t, f, id); ev.Attempt != 2 || ev.GetFinished().Agent != want {
		t.Fatalf("the finished event is %v, want attempt 2 on %q", ev, want)
	}
	// Events the stale attempt published after the build ended.
	var late []*kilnv1.BuildEvent
	for _, ev := range f.eventLog(t, id) {
		if ev.Attempt == 1 && ev.Time.AsTime().After(b.FinishedAt.AsTime()) {
			late = append(late, ev)
		}
	}
	t.Logf("the stopped agent published %d events of attempt 1 after the build had finished:\n%s", len(late), eventsString(late))
}

// TestFaultPoisonBuildFails kills whichever agent runs a build, every time,
// starting a fresh agent on the same engine so capacity remains: after
// --max-attempts (3) lost agents the build fails with a reason naming them,
// and nothing is left queued or running.
func TestFaultPoisonBuildFails(t *testing.T) {
	engines := enginetest.StartEngines(t, "poison1", "poison2")
	byAgent := map[string]*enginetest.Engine{"poison-1": engines[0], "poison-2": engines[1]}
	f := startFaultFarm(t, faultFarmOptions{maxAttempts: 3, spareAgents: []string{"poison-3", "poison-4", "poison-5"}}, engines, "poison-1", "poison-2")

	n := uniq()
	id := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo poison-%s && sleep 120\n", f.base, n), nil)
	w := f.watch(t, id)
	var lost []string
	for attempt := uint32(1); attempt <= 3; attempt++ {
		victim := w.waitEvent(t, time.Minute, fmt.Sprintf("attempt %d running", attempt), isState(running, attempt)).GetState().Agent
		f.agents[victim].kill(t)
		lost = append(lost, victim)
		fresh := fmt.Sprintf("poison-%d", attempt+2)
		byAgent[fresh] = byAgent[victim]
		f.startAgent(fresh, byAgent[victim])
	}

	fin := w.finished(t, time.Minute)
	if fin.State != failed {
		t.Fatalf("build finished %s, want FAILED: %v", fin.State, fin)
	}
	t.Logf("reason: %s", fin.Error)
	for _, agent := range lost {
		if !strings.Contains(fin.Error, agent) {
			t.Errorf("the reason %q does not name lost agent %q (lost: %q)", fin.Error, agent, lost)
		}
	}
	b := f.get(t, id)
	if b.State != failed || b.Attempt != 3 {
		t.Fatalf("record is %s at attempt %d, want FAILED at attempt 3", b.State, b.Attempt)
	}
	if ev := exactlyOneFinished(t, f, id); ev.GetFinished().State != failed {
		t.Fatalf("the finished event is %v, want FAILED", ev)
	}
	for _, b := range f.list(t) {
		if !buildstore.Terminal(b.State) {
			t.Errorf("build %s is left %s", b.Id, b.State)
		}
	}
	for agent, e := range byAgent {
		if left := containersMentioning(t, e, "poison-"+n); len(left) > 0 {
			// The engine ends a killed agent's build; give it the time it takes.
			waitFor(t, 30*time.Second, "the build containers on "+agent+"'s engine to go", func() bool {
				return len(containersMentioning(t, e, "poison-"+n)) == 0
			})
		}
	}
}

// TestFaultCancel cancels a build that waits in the queue (the only agent
// is busy), which ends it at once without it ever running, and then the
// running build, which ends within seconds and leaves no container on the
// engine.
func TestFaultCancel(t *testing.T) {
	engines := enginetest.StartEngines(t, "cancel1")
	f := startFaultFarm(t, faultFarmOptions{}, engines, "cancel-a")
	ctx := context.Background()

	n := uniq()
	long := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo long-%s && sleep 120\n", f.base, n), nil)
	wl := f.watch(t, long)
	wl.waitEvent(t, time.Minute, "the long RUN's first line", isLog("long-"+n))

	queued := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo queued-%s\n", f.base, n), nil)
	resp, err := f.bs.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: queued})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Build.State != cancelled {
		t.Fatalf("CancelBuild of a queued build returned it %s, want CANCELLED at once", resp.Build.State)
	}

	cancelAt := time.Now()
	if _, err := f.bs.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: long}); err != nil {
		t.Fatal(err)
	}
	fin := wl.finished(t, time.Minute)
	t.Logf("running build finished %s %v after CancelBuild", fin.State, time.Since(cancelAt).Round(time.Millisecond))
	if fin.State != cancelled {
		t.Fatalf("running build finished %s, want CANCELLED: %v", fin.State, fin)
	}
	if b := f.get(t, long); b.State != cancelled {
		t.Fatalf("running build's record is %s after its finished event, want CANCELLED", b.State)
	}
	if left := containersMentioning(t, engines[0], "long-"+n); len(left) > 0 {
		t.Fatalf("the cancelled build left containers on the engine: %q", left)
	}

	// The agent is free again and the queue is first in, first out: once a
	// later build has run, the cancelled one was passed over for good.
	after := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo after-%s\n", f.base, n), nil)
	if fin := f.watch(t, after).finished(t, 2*time.Minute); fin.State != succeeded {
		t.Fatalf("the build after the cancellations finished %s: %v", fin.State, fin)
	}
	b := f.get(t, queued)
	if b.State != cancelled || b.Attempt != 0 || b.Agent != "" {
		t.Fatalf("cancelled queued build is %s, attempt %d, agent %q; want CANCELLED, never assigned", b.State, b.Attempt, b.Agent)
	}
	log := f.eventLog(t, queued)
	for _, ev := range log {
		if isState(assigned, 0)(ev) || isState(running, 0)(ev) || ev.GetLog() != nil {
			t.Fatalf("the build cancelled while queued ran:\n%s", eventsString(log))
		}
	}
	if ev := exactlyOneFinished(t, f, queued); ev.GetFinished().State != cancelled {
		t.Fatalf("the queued build's finished event is %v, want CANCELLED", ev)
	}
}

// restartMidRun starts builds on a farm of two agents, waits until some run
// while others wait, calls restart, starts more builds, and then checks that
// every accepted build finished exactly once and nothing is left behind.
func restartMidRun(t *testing.T, prefix string, restart func(f *faultFarm, submitDuring func())) *faultFarm {
	engines := enginetest.StartEngines(t, prefix+"1", prefix+"2")
	f := startFaultFarm(t, faultFarmOptions{}, engines, prefix+"-a", prefix+"-b")
	n := uniq()
	dockerfile := func(i int) string {
		return fmt.Sprintf("FROM %s\nRUN echo %s-%d-%s && sleep 2\n", f.base, prefix, i, n)
	}
	var (
		mu       sync.Mutex
		accepted []string
		refused  []error
	)
	for i := range 5 {
		accepted = append(accepted, f.submit(t, dockerfile(i), nil))
	}
	waitFor(t, time.Minute, "builds running and others queued", func() bool {
		var run, queue int
		for _, b := range f.list(t) {
			switch b.State {
			case running:
				run++
			case kilnv1.BuildState_BUILD_STATE_QUEUED:
				queue++
			}
		}
		return run >= 2 && queue >= 2
	})

	var wg sync.WaitGroup
	submitDuring := func() {
		// Builds asked for while the part is down: each is either refused
		// or accepted, and an accepted one must finish.
		for i := 5; i < 7; i++ {
			blob := tarContext(t, map[string]string{"Dockerfile": dockerfile(i)})
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				id, err := f.trySubmit(ctx, blob, nil)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					refused = append(refused, err)
					return
				}
				accepted = append(accepted, id)
			}()
		}
	}
	restarted := time.Now()
	restart(f, submitDuring)
	wg.Wait()
	accepted = append(accepted, f.submit(t, dockerfile(7), nil))
	t.Logf("%d builds accepted, %d refused while down: %v", len(accepted), len(refused), refused)

	builds := f.waitAllTerminal(t, 3*time.Minute)
	t.Logf("every build ended %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if len(builds) != len(accepted) {
		t.Errorf("the farm holds %d builds, %d were accepted", len(builds), len(accepted))
	}
	for _, id := range accepted {
		b := f.get(t, id)
		ev := exactlyOneFinished(t, f, id)
		t.Logf("build %s: %s at attempt %d on %s", id, b.State, b.Attempt, b.Agent)
		if b.State != succeeded || ev.GetFinished().State != succeeded {
			t.Errorf("build %s ended %s (finished event %s), want SUCCEEDED: %s", id, b.State, ev.GetFinished().State, b.Error)
		}
	}
	return f
}

// TestFaultSchedulerRestart kills the scheduler mid-run and starts a new
// one; builds are also asked for while none runs. Then, with every agent
// idle and waiting on the new scheduler, it stops that one cleanly, starts
// another and reports how long a new build waits to run.
func TestFaultSchedulerRestart(t *testing.T) {
	f := restartMidRun(t, "sched", func(f *faultFarm, submitDuring func()) {
		f.sched.kill(t)
		submitDuring()
		f.startScheduler()
	})
	f.sched.terminate(t)
	f.startScheduler()
	submitted := time.Now()
	id := f.submit(t, fmt.Sprintf("FROM %s\nRUN echo idle-%s\n", f.base, uniq()), nil)
	w := f.watch(t, id)
	w.waitEvent(t, time.Minute, "the build to run", isState(running, 0))
	t.Logf("after a clean scheduler restart with idle agents, a new build waited %v to run", time.Since(submitted).Round(time.Millisecond))
	if fin := w.finished(t, time.Minute); fin.State != succeeded {
		t.Fatalf("build after the clean restart finished %s: %v", fin.State, fin)
	}
}

// TestFaultNATSRestart shuts the NATS server down mid-run and starts it
// again on the same port with the same store; builds are also asked for
// while it is down.
func TestFaultNATSRestart(t *testing.T) {
	_ = restartMidRun(t, "nats", func(f *faultFarm, submitDuring func()) {
		f.restartNATS(submitDuring)
	})
}

// TestFaultNATSRestartDuringContextFetch restarts NATS while the agent
// streams a large context from the farm's CAS to its engine (the build is
// RUNNING and no step has started): the interruption is the farm's, not
// the build's, so the build must still succeed.
func TestFaultNATSRestartDuringContextFetch(t *testing.T) {
	engines := enginetest.StartEngines(t, "fetch1")
	f := startFaultFarm(t, faultFarmOptions{}, engines, "fetch-a")
	n := uniq()
	big := make([]byte, 96<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	id := f.submitFiles(t, map[string]string{
		"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo fetched-%s\n", f.base, n),
		"big.bin":    string(big),
	}, nil)
	waitFor(t, time.Minute, "the build to run", func() bool { return f.get(t, id).State == running })
	down := time.Now()
	f.restartNATS(nil)

	fin := f.watch(t, id).finished(t, 90*time.Second)
	log := f.eventLog(t, id)
	for _, ev := range log {
		if ev.GetStepStarted() != nil {
			if at := ev.Time.AsTime(); at.Before(down) {
				t.Logf("the first step started %v before NATS went down: the fetch was over", down.Sub(at))
			}
			break
		}
	}
	b := f.get(t, id)
	t.Logf("build ended %s at attempt %d: %s", b.State, b.Attempt, b.Error)
	if fin.State != succeeded || b.State != succeeded {
		t.Errorf("build ended %s (record %s), want SUCCEEDED: a NATS restart during the context fetch failed it: %s", fin.State, b.State, b.Error)
	}
	if fins := finishedEvents(log); len(fins) != 1 {
		t.Errorf("build has %d finished events, want 1:\n%s", len(fins), eventsString(log))
	}
}
