package kiln_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"github.com/kilnbuild/kiln/sdk/kiln"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// These tests build on the real farm TestMain starts (farmAddr).

// buildTimeout bounds one test's builds on the shared engine.
const buildTimeout = 3 * time.Minute

// dialFarm returns a client of the real farm, closed when the test ends.
func dialFarm(t *testing.T, opts ...kiln.Option) *kiln.Client {
	t.Helper()
	c, err := kiln.Dial(t.Context(), farmAddr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// packDockerfile packs a context of one Dockerfile.
func packDockerfile(t *testing.T, dockerfile string) *kiln.Context {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	bc, err := kiln.PackContext(t.Context(), dir, "Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return bc
}

// collect reads a build's events to the channel's close.
func collect(b *kiln.Build) []kiln.Event {
	var evs []kiln.Event
	for ev := range b.Events() {
		evs = append(evs, ev)
	}
	return evs
}

// TestWaitNamesTheFailingStep: a RUN step that fails ends Wait with a
// *BuildFailedError naming that step, its instruction and its last
// FailedOutputLines lines of output, and the error matches neither
// ErrCancelled nor ErrTimedOut.
func TestWaitNamesTheFailingStep(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	run := `RUN for i in $(seq 1 30); do echo "line $i"; done; exit 3`
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN echo fine\n"+run+"\nRUN echo never\n")
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		t.Fatal(err)
	}
	record, err := b.Wait(ctx)
	var failed *kiln.BuildFailedError
	if !errors.As(err, &failed) {
		t.Fatalf("Wait: %v, %v; want a *BuildFailedError", record.GetState(), err)
	}
	if errors.Is(err, kiln.ErrCancelled) || errors.Is(err, kiln.ErrTimedOut) {
		t.Errorf("a failed build's error %v matches ErrCancelled or ErrTimedOut", err)
	}
	if record.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || failed.Build.GetId() != b.ID() {
		t.Errorf("record %v of build %s, want FAILED of %s", record.GetState(), failed.Build.GetId(), b.ID())
	}
	if failed.Step != 3 || failed.Instruction != run {
		t.Errorf("failed at step %d %q, want step 3 %q", failed.Step, failed.Instruction, run)
	}
	var want []string
	for i := 31 - kiln.FailedOutputLines; i <= 30; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if !slices.Equal(failed.Output, want) {
		t.Errorf("output %q, want the step's last %d lines %q", failed.Output, kiln.FailedOutputLines, want)
	}
	if msg := err.Error(); !strings.Contains(msg, b.ID()) || !strings.Contains(msg, "step 3") {
		t.Errorf("error %q names neither the build nor the step", msg)
	}
}

// TestCancelEndsWithErrCancelled cancels a running build through its
// handle: the farm ends it CANCELLED, Events ends with that *Finished
// event, and Wait's error matches ErrCancelled.
func TestCancelEndsWithErrCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN echo started && sleep 600\n")
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		t.Fatal(err)
	}
	var last kiln.Event
	for ev := range b.Events() {
		last = ev
		if l, ok := ev.(*kiln.LogLine); ok && l.Step == 2 && l.Text == "started" {
			if r := b.Record(); r.GetState() != kilnv1.BuildState_BUILD_STATE_RUNNING || r.GetAgent() != "farmtest-agent" {
				t.Errorf("Record() while the step runs: %v on %q, want RUNNING on farmtest-agent", r.GetState(), r.GetAgent())
			}
			if err := b.Cancel(ctx); err != nil {
				t.Fatalf("Cancel: %v", err)
			}
		}
	}
	record, err := b.Wait(ctx)
	if !errors.Is(err, kiln.ErrCancelled) || errors.Is(err, kiln.ErrTimedOut) {
		t.Fatalf("Wait: %v, %v; want an error matching ErrCancelled only", record.GetState(), err)
	}
	var failed *kiln.BuildFailedError
	if errors.As(err, &failed) {
		t.Errorf("a cancelled build's error %v is a *BuildFailedError", err)
	}
	if record.GetState() != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		t.Errorf("record %v, want CANCELLED", record.GetState())
	}
	if f, ok := last.(*kiln.Finished); !ok || f.State != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		t.Errorf("last event %T %v, want a CANCELLED *Finished", last, last.Proto())
	}
	if got := b.Record().GetState(); got != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		t.Errorf("Record() after Wait: %v, want CANCELLED", got)
	}
}

// TestTimeoutEndsWithErrTimedOut: a build that runs past
// BuildRequest.Timeout is cancelled by the farm, and Wait's error matches
// ErrTimedOut, not ErrCancelled.
func TestTimeoutEndsWithErrTimedOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN sleep 600\n")
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Record().GetSpec().GetTimeout().AsDuration(); got != 3*time.Second {
		t.Errorf("the farm recorded a timeout of %s, want 3s", got)
	}
	evs := collect(b)
	record, err := b.Wait(ctx)
	if !errors.Is(err, kiln.ErrTimedOut) || errors.Is(err, kiln.ErrCancelled) {
		t.Fatalf("Wait: %v, %v; want an error matching ErrTimedOut only", record.GetState(), err)
	}
	if record.GetState() != kilnv1.BuildState_BUILD_STATE_CANCELLED || !record.GetTimedOut() {
		t.Errorf("record %v timed_out %v, want CANCELLED and timed out", record.GetState(), record.GetTimedOut())
	}
	if f, ok := evs[len(evs)-1].(*kiln.Finished); !ok || !f.TimedOut {
		t.Errorf("last event %v, want a *Finished that timed out", evs[len(evs)-1].Proto())
	}
}

// TestListPages walks builds a page at a time: every build of the
// repository once, newest first, in as many ListBuilds calls as pages,
// and no call beyond the page where the loop stops.
func TestListPages(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	var calls atomic.Int32
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if strings.HasSuffix(method, "/ListBuilds") {
			calls.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c := dialFarm(t, kiln.WithDialOptions(grpc.WithChainUnaryInterceptor(count)))
	repo := fmt.Sprintf("example.com/list-pages-%d", time.Now().UnixNano())
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN echo listed\n")
	var started []string
	for range 5 {
		b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{Repository: repo}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		started = append(started, b.ID())
	}
	slices.Reverse(started) // newest first

	var listed []string
	var prev time.Time
	for b, err := range c.List(ctx, kiln.ListFilter{Repository: repo, PageSize: 2}) {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		created := b.GetCreatedAt().AsTime()
		if len(listed) > 0 && created.After(prev) {
			t.Errorf("build %s created %s listed after one created %s: not newest first", b.GetId(), created, prev)
		}
		prev = created
		listed = append(listed, b.GetId())
	}
	if !slices.Equal(listed, started) {
		t.Fatalf("List gave %v, want the repository's builds newest first %v", listed, started)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("5 builds in pages of 2 took %d ListBuilds calls, want 3", n)
	}

	calls.Store(0)
	for b, err := range c.List(ctx, kiln.ListFilter{Repository: repo, PageSize: 2}) {
		if err != nil || b.GetId() != started[0] {
			t.Fatalf("List's first build: %v, %v; want %s", b.GetId(), err, started[0])
		}
		break
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("a loop that stopped at the first build made %d ListBuilds calls, want 1", n)
	}

	for b, err := range c.List(ctx, kiln.ListFilter{Repository: repo, States: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_FAILED}}) {
		t.Fatalf("List of the repository's failed builds gave %v, %v; want none", b.GetId(), err)
	}
}

// TestWatchFromSequence follows one build from several sequences, while
// it runs and after it ended: each watch gets the log from its sequence
// on, every event once, in order, equal to the full log.
func TestWatchFromSequence(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN for i in 1 2 3 4 5; do echo \"tick $i\"; sleep 0.2; done\n")
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		t.Fatal(err)
	}
	// A second watcher joins mid-build, from sequence 3.
	var live []kiln.Event
	var joined chan []kiln.Event
	for ev := range b.Events() {
		live = append(live, ev)
		if joined == nil && ev.Sequence() >= 4 {
			w, err := c.Watch(ctx, b.ID(), 3)
			if err != nil {
				t.Fatalf("Watch from 3 while running: %v", err)
			}
			joined = make(chan []kiln.Event, 1)
			go func() { joined <- collect(w) }()
		}
	}
	if _, err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	checkLog(t, "Build's events", live, 1, nil)
	if joined == nil {
		t.Fatalf("the build ended with %d events, before sequence 4", len(live))
	}
	checkLog(t, "a watch joined mid-build from 3", <-joined, 3, live)

	for _, from := range []uint64{0, 1, uint64(len(live) / 2), uint64(len(live))} {
		w, err := c.Watch(ctx, b.ID(), from)
		if err != nil {
			t.Fatalf("Watch from %d: %v", from, err)
		}
		checkLog(t, fmt.Sprintf("a watch from %d after the end", from), collect(w), max(from, 1), live)
		if rec, err := w.Wait(ctx); err != nil || rec.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			t.Errorf("Wait of the watch from %d: %v, %v", from, rec.GetState(), err)
		}
	}
}

// checkLog checks that evs is a build's log from sequence from to its
// *Finished event, each sequence once and in order, and, given the full
// log, equal to it.
func checkLog(t *testing.T, what string, evs []kiln.Event, from uint64, full []kiln.Event) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatalf("%s: no event", what)
	}
	for i, ev := range evs {
		if want := from + uint64(i); ev.Sequence() != want {
			t.Fatalf("%s: event %d has sequence %d, want %d (a gap or a duplicate)", what, i, ev.Sequence(), want)
		}
		if full != nil && !proto.Equal(ev.Proto(), full[ev.Sequence()-1].Proto()) {
			t.Fatalf("%s: event %d is %v, the log has %v", what, ev.Sequence(), ev.Proto(), full[ev.Sequence()-1].Proto())
		}
	}
	if _, ok := evs[len(evs)-1].(*kiln.Finished); !ok {
		t.Fatalf("%s: ends with %T, not the *Finished event", what, evs[len(evs)-1])
	}
	if full != nil && evs[len(evs)-1].Sequence() != full[len(full)-1].Sequence() {
		t.Fatalf("%s: ends at %d, the log at %d", what, evs[len(evs)-1].Sequence(), full[len(full)-1].Sequence())
	}
}

// TestRetryRunsTheBuildAgain: Retry queues a new build of the same spec
// and context, which fails at the same step; the same idempotency key
// returns that build again, and an unknown build is NotFound.
func TestRetryRunsTheBuildAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN echo flaky && exit 1\n")
	first, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true, Repository: "example.com/retry"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Wait(ctx); err == nil {
		t.Fatal("the build succeeded, want it to fail")
	}

	key := fmt.Sprintf("retry-%d", time.Now().UnixNano())
	again, err := c.Retry(ctx, first.ID(), key)
	if err != nil {
		t.Fatalf("Retry: %v", err)
	}
	if again.GetId() == first.ID() || again.GetRetryOf() != first.ID() || again.GetSpec().GetRepository() != "example.com/retry" {
		t.Fatalf("Retry gave build %s (retry of %q, repository %q), want a new build of %s's spec", again.GetId(), again.GetRetryOf(), again.GetSpec().GetRepository(), first.ID())
	}
	same, err := c.Retry(ctx, first.ID(), key)
	if err != nil || same.GetId() != again.GetId() {
		t.Fatalf("Retry with the same key: %v, %v; want build %s again", same.GetId(), err, again.GetId())
	}
	w, err := c.Watch(ctx, again.GetId(), 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Wait(ctx)
	var failed *kiln.BuildFailedError
	if !errors.As(err, &failed) || failed.Step != 2 || !slices.Equal(failed.Output, []string{"flaky"}) {
		t.Fatalf("the retried build: %v; want it to fail at step 2 with output [flaky]", err)
	}

	if _, err := c.Retry(ctx, "b0000000000000000000000000", ""); status.Code(err) != codes.NotFound {
		t.Errorf("Retry of an unknown build: %v, want NotFound", err)
	}
}

// TestFarmInfo: the farm names its gateway's version and its agent.
func TestFarmInfo(t *testing.T) {
	c := dialFarm(t)
	info, err := c.FarmInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.GetGatewayVersion() == "" || len(info.GetAgents()) != 1 || info.GetAgents()[0].GetName() != "farmtest-agent" {
		t.Fatalf("FarmInfo: %v; want the gateway's version and the agent farmtest-agent", info)
	}
}

// TestEventsResumeAcrossALostGateway cuts the network to the gateway in
// the middle of a step and keeps it down while the client retries: once
// it is back, the events go on from the one after the last delivered, so
// the caller sees the build's whole log once, in order.
func TestEventsResumeAcrossALostGateway(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	proxy := farmtest.StartProxy(t, farmAddr)
	c, err := kiln.Dial(ctx, proxy.Addr, kiln.WithFailover(time.Minute, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bc := packDockerfile(t, "FROM "+farmtest.BaseImage+"\nRUN for i in $(seq 1 20); do echo \"tick $i\"; sleep 0.2; done\n")
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		t.Fatal(err)
	}
	var got []kiln.Event
	cut := false
	var restored time.Time
	for ev := range b.Events() {
		got = append(got, ev)
		if l, ok := ev.(*kiln.LogLine); ok && l.Text == "tick 3" && !cut {
			cut = true
			proxy.Cut()
			// The client tries again, and is refused, twice.
			if err := proxy.AwaitRefused(ctx, 2); err != nil {
				t.Fatalf("the client did not reconnect: %v", err)
			}
			proxy.Restore()
			restored = time.Now()
		}
	}
	if !cut {
		t.Fatalf("no \"tick 3\" line among %d events", len(got))
	}
	if last := got[len(got)-1]; !last.Time().After(restored) {
		t.Fatalf("the build finished at %s, before the network came back at %s: nothing was resumed", last.Time(), restored)
	}
	if rec, err := b.Wait(ctx); err != nil || rec.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("Wait across the cut: %v, %v", rec.GetState(), err)
	}
	w, err := dialFarm(t).Watch(ctx, b.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	full := collect(w)
	checkLog(t, "events across the cut", got, 1, full)
	if len(got) != len(full) {
		t.Fatalf("the caller saw %d events, the farm's log has %d", len(got), len(full))
	}
}
