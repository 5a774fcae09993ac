package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// Chaos test shape: the numbers. Each build is cheap (a RUN shared
// by its lineage, so cached after the lineage's first build on an agent,
// and a COPY of a small file of its own) so that 300 of them fit this
// machine's two cores.
const (
	chaosBuilds   = 300
	chaosClients  = 20
	chaosLineages = 30
	// chaosClientDeadline bounds each client's whole share of the work: a
	// client still waiting past it fails the test with what it waited for.
	chaosClientDeadline = 7 * time.Minute
)

// chaosBuild is one build of the workload and what its client saw.
type chaosBuild struct {
	n      int
	tag    string // tag within the run's repository, e.g. b007
	dir    string // its context directory
	key    string // idempotency key
	client int

	rejected error // the upload or StartBuild failed: not accepted
	id       string
	events   []*kilnv1.BuildEvent // as the client's watch delivered them
	final    *kilnv1.Build        // the record WatchBuild returned
	finalErr error                // Wait's error (a *BuildFailedError, ErrCancelled for FAILED/CANCELLED)
	resumes  int                  // watches the client re-opened itself after the SDK gave up
	waiting  string               // what the client was doing (kept when its deadline passed); under mu
	mu       sync.Mutex
	hung     bool
	ended    time.Time // when the client was done with it
}

func (b *chaosBuild) setWaiting(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waiting = s
}

func (b *chaosBuild) markDone() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ended = time.Now()
}

func (b *chaosBuild) doneFlag() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.ended.IsZero()
}

func (b *chaosBuild) getWaiting() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting
}

// chaosKill is one of the monkey's kills and how the farm recovered.
type chaosKill struct {
	what     string // scheduler leader, NATS node, agent, gateway
	name     string
	at       time.Duration // since the workload started
	when     time.Time
	inFlight int // builds accepted and not yet finished at the kill
	// recovered is kill → serving again: a new scheduler leader elected
	// (scheduler), else the restarted process's /readyz (/healthz for NATS).
	recovered time.Duration
	// restarted is Restart's call → the process serving again.
	restarted time.Duration
	err       error
}

// TestChaosKillsUnderLoadLoseNoBuild runs the chaos scenario: a
// 3-node NATS cluster (R3), 2 gateways, 2 schedulers and 3 agents on 3
// engines; 20 clients submit 300 small builds through the SDK (both gateway
// addresses, an idempotency key each, watched to the end) while a monkey
// SIGKILLs, at random moments, the scheduler leader, a NATS node, an agent
// and a gateway, and restarts each after a pause. Every build whose
// StartBuild returned OK must end SUCCEEDED exactly once: one finished
// event in its whole event log, the client's watch equal to a replay from
// sequence 0 (no gap, no duplicate), one build record for its tag, and the
// registry holding the digest the record says was pushed. No client may
// outlive its deadline.
//
// `make chaos` runs it alone.
func TestChaosKillsUnderLoadLoseNoBuild(t *testing.T) {
	testStart := time.Now()
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	t.Setenv("KILN_CACHE_DIR", t.TempDir()) // the SDK's stat cache: 300 contexts
	ctx, cancel := context.WithTimeout(t.Context(), 13*time.Minute)
	defer cancel()

	f := startLocalFarm(t, ctx, localfarm.Options{NATS: 3, Gateways: 2, Schedulers: 2, Agents: 3, Images: []string{base}})
	gws := f.GatewayAddrs()
	if len(gws) != 2 {
		t.Fatalf("farm gateways %v, want 2", gws)
	}
	if _, err := waitUntil(ctx, time.Minute, "a scheduler leader", func() bool { return f.leader() != "" }); err != nil {
		t.Fatal(err)
	}

	run := uniq()
	repo := "kiln-chaos-" + run
	builds := make([]*chaosBuild, chaosBuilds)
	for i := range builds {
		b := &chaosBuild{n: i, tag: fmt.Sprintf("b%03d", i), key: fmt.Sprintf("chaos-%s-%03d", run, i)}
		b.dir = writeContext(t, map[string]string{
			"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo chaos-%s-lineage-%d > /lineage\nCOPY f.txt /f.txt\n", base, run, i%chaosLineages),
			"f.txt":      fmt.Sprintf("build %d of run %s\n", i, run),
		})
		builds[i] = b
	}

	// The workload: 20 clients, half preferring each gateway.
	var progress struct {
		sync.Mutex
		accepted, finished int
	}
	inFlight := func() int {
		progress.Lock()
		defer progress.Unlock()
		return progress.accepted - progress.finished
	}
	jobs := make(chan *chaosBuild)
	var clients sync.WaitGroup
	workStart := time.Now()
	for i := range chaosClients {
		addrs := slices.Clone(gws)
		if i%2 == 1 {
			slices.Reverse(addrs)
		}
		c := dialFarm(t, addrs)
		clients.Add(1)
		go func() {
			defer clients.Done()
			cctx, cancel := context.WithTimeout(ctx, chaosClientDeadline)
			defer cancel()
			for b := range jobs {
				b.client = i
				if cctx.Err() != nil {
					b.hung = true
					b.setWaiting("its turn: the client's deadline passed before it could start")
					continue
				}
				accepted := runChaosBuild(cctx, c, repo, reg, b, func() {
					progress.Lock()
					progress.accepted++
					progress.Unlock()
				})
				if accepted {
					progress.Lock()
					progress.finished++
					progress.Unlock()
				}
				if cctx.Err() != nil && b.final == nil {
					b.hung = true
				}
				b.markDone()
			}
		}()
	}
	workDone := make(chan struct{})
	go func() {
		for _, b := range builds {
			jobs <- b
		}
		close(jobs)
		clients.Wait()
		close(workDone)
	}()

	// The monkey: the four kills in a random order, each at a random
	// moment, each restarted after a random pause.
	kills := []*chaosKill{{what: "scheduler leader"}, {what: "NATS node"}, {what: "agent"}, {what: "gateway"}}
	rand.Shuffle(len(kills), func(i, j int) { kills[i], kills[j] = kills[j], kills[i] })
	monkeyDone := make(chan struct{})
	go func() {
		defer close(monkeyDone)
		for _, k := range kills {
			// Random moments and pauses are the workload, not synchronisation.
			select {
			case <-time.After(time.Duration(3+rand.IntN(22)) * time.Second):
			case <-ctx.Done():
				k.err = ctx.Err()
				return
			}
			k.err = chaosStrike(ctx, f, k, workStart, inFlight)
			if k.err != nil {
				return
			}
		}
	}()

	// A watchdog, not synchronisation: when no client has finished a build
	// for a minute, it logs what each busy client waits for and the NATS
	// replicas, while the stall lasts.
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		last, since, told := -1, time.Now(), false
		for {
			select {
			case <-workDone:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			progress.Lock()
			n := progress.accepted + progress.finished
			progress.Unlock()
			if n != last {
				last, since, told = n, time.Now(), false
				continue
			}
			if told || time.Since(since) < time.Minute {
				continue
			}
			told = true
			var busy []string
			for _, b := range builds {
				if w := b.getWaiting(); w != "" && !b.doneFlag() {
					busy = append(busy, fmt.Sprintf("  %s: %s", b.tag, w))
				}
			}
			t.Logf("chaos: no build started or finished for %v; clients busy:\n%s\nNATS replicas:\n%s",
				time.Since(since).Round(time.Second), strings.Join(busy, "\n"), f.replicaView(ctx))
			if os.Getenv("KILN_CHAOS_DUMP_ON_STALL") != "" {
				// For diagnosis only: SIGQUIT makes each gateway write its
				// goroutines to its log (and exit).
				for _, p := range f.named("gateway") {
					if p.PID > 0 {
						_ = syscall.Kill(p.PID, syscall.SIGQUIT)
						t.Logf("chaos: sent SIGQUIT to %s (pid %d): goroutines in its log", p.Name, p.PID)
					}
				}
			}
		}
	}()
	select {
	case <-workDone:
	case <-ctx.Done():
		f.reportCrashes()
		t.Fatalf("the workload did not end: the test's context ended (%v) with clients still running", ctx.Err())
	}
	<-watchdogDone
	workTook := time.Since(workStart)
	var lastDone time.Time // the last build a client finished without hanging
	for _, b := range builds {
		if !b.hung && b.ended.After(lastDone) {
			lastDone = b.ended
		}
	}
	<-monkeyDone // every wait in it has a deadline

	// A farm process that crashed (a panic) is the likeliest cause of
	// whatever else fails below: say so first.
	f.reportCrashes()

	// Every process is back: check the farm serves before reading from it.
	var failures []chaosFailure
	for _, p := range f.Processes() {
		if p.Role == "engine" || p.HTTP == "" {
			continue
		}
		if _, err := waitUntil(ctx, time.Minute, p.Name+" serving", func() bool { return f.serving(p.Name) }); err != nil {
			line := fmt.Sprintf("%s does not serve after the chaos: %v", p.Name, err)
			if q, ok := f.Find(p.Name); ok && q.PID == 0 {
				line += " (its process has exited: see its log's tail below)"
			}
			failures = append(failures, chaosFailure{check: "not serving after the chaos", headline: line})
		}
	}

	checker := dialFarm(t, gws)
	sum := checkChaosBuilds(t, ctx, f, checker, reg, repo, builds)
	failures = append(failures, sum.failures...)
	for _, k := range kills {
		switch {
		case k.name == "":
			failures = append(failures, chaosFailure{check: "monkey", headline: fmt.Sprintf("the monkey never killed the %s: %v", k.what, k.err)})
		case k.err != nil:
			failures = append(failures, chaosFailure{check: "monkey", headline: fmt.Sprintf("%s %s killed at +%v (%s, %d builds in flight): %v",
				k.what, k.name, k.at.Round(time.Millisecond), k.when.UTC().Format("15:04:05.000"), k.inFlight, k.err)})
		}
	}
	if sum.accepted < chaosBuilds/2 {
		failures = append(failures, chaosFailure{check: "accepted", headline: fmt.Sprintf("the farm accepted only %d of %d builds", sum.accepted, chaosBuilds)})
	}
	// CI shows the start of a failure's output: one line per failed check
	// first, the details after the run's numbers.
	if len(failures) > 0 {
		t.Errorf("chaos: %s", chaosFailureSummary(failures))
	}

	t.Logf("chaos: %d builds, %d clients, %d lineages; workload started %s, took %v (the last client that did not hang was done after %v); test took %v",
		chaosBuilds, chaosClients, chaosLineages, workStart.UTC().Format("15:04:05.000"), workTook.Round(time.Millisecond), lastDone.Sub(workStart).Round(time.Millisecond), time.Since(testStart).Round(time.Millisecond))
	t.Logf("chaos: accepted %d, completed %d, duplicated %d, lost %d; clients that did not see their completed build whole %d (hung %d); StartBuild/upload refused %d; watches re-opened by a client after the SDK gave up %d",
		sum.accepted, sum.completed, sum.duplicated, sum.lost, sum.clientErrors, sum.hung, sum.rejected, sum.resumes)
	if sum.lost+sum.duplicated+sum.clientErrors > 0 {
		t.Logf("chaos: each NATS node's replica of each stream now:\n%s", f.replicaView(ctx))
	}
	for _, r := range sum.rejections {
		t.Logf("chaos: refused: %s", r)
	}
	for _, k := range kills {
		if k.name != "" && k.err == nil {
			t.Logf("chaos: %s %s killed at +%v (%s, %d builds in flight): recovered after %v (restart → serving %v)",
				k.what, k.name, k.at.Round(time.Millisecond), k.when.UTC().Format("15:04:05.000"), k.inFlight, k.recovered.Round(time.Millisecond), k.restarted.Round(time.Millisecond))
		}
	}
	for _, k := range kills {
		if k.name != "" && k.inFlight == 0 {
			t.Logf("chaos: note: the %s was killed with no build in flight", k.what)
		}
	}
	for _, fl := range failures {
		if fl.detail != "" && fl.detail != fl.headline {
			t.Logf("chaos: %s:\n%s", fl.headline, fl.detail)
		}
	}
}

// chaosFailure is one failed check of the chaos test: a headline of one
// line for the summary the test prints first, and the details (if more
// than the headline) it prints after the run's numbers.
type chaosFailure struct {
	check    string // what failed, e.g. "lost", "duplicated", "client": the summary groups by it
	headline string
	detail   string
}

// chaosFailureSummary is one line per kind of failed check — how many,
// and the first one's headline — so that CI's cut of the output, which
// keeps its start, says what failed.
func chaosFailureSummary(failures []chaosFailure) string {
	var kinds []string
	byKind := map[string][]chaosFailure{}
	for _, fl := range failures {
		if _, ok := byKind[fl.check]; !ok {
			kinds = append(kinds, fl.check)
		}
		byKind[fl.check] = append(byKind[fl.check], fl)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d checks failed (details below the run's numbers):", len(failures))
	for _, k := range kinds {
		fs := byKind[k]
		fmt.Fprintf(&b, "\n  %d× %s; first: %s", len(fs), k, fs[0].headline)
	}
	return b.String()
}

// runChaosBuild uploads b's context, starts it with its idempotency key
// and watches it to its end, recording what happened in b; onAccepted runs
// once StartBuild returned a build. It reports whether the build was
// accepted. A watch the SDK gives up on is re-opened after the last event
// seen until ctx ends.
func runChaosBuild(ctx context.Context, c *kilnsdk.Client, repo, reg string, b *chaosBuild, onAccepted func()) bool {
	b.setWaiting("packing the context")
	bc, err := packDir(ctx, b.dir)
	if err != nil {
		b.rejected = err
		return false
	}
	b.setWaiting("uploading the context")
	if _, err := c.UploadContext(ctx, bc); err != nil {
		b.rejected = err
		return false
	}
	b.setWaiting("StartBuild")
	build, err := c.Build(ctx, kilnsdk.BuildRequest{
		Spec:           &kilnv1.BuildSpec{Tags: []string{reg + "/" + repo + ":" + b.tag}, Push: true},
		Context:        bc,
		IdempotencyKey: b.key,
	})
	if err != nil {
		b.rejected = err
		return false
	}
	b.id = build.ID()
	onAccepted()
	var last uint64
	onEvent := func(ev *kilnv1.BuildEvent) {
		b.events = append(b.events, ev)
		last = ev.GetSequence()
		b.setWaiting(fmt.Sprintf("watching build %s, last event %d: %s", b.id, last, strings.TrimSpace(ev.String())))
	}
	b.setWaiting("watching build " + b.id + ", no event yet")
	for {
		if build == nil {
			build, err = c.Watch(ctx, b.id, last+1)
		}
		b.final = nil
		if err == nil {
			for ev := range build.Events() {
				onEvent(ev.Proto())
			}
			b.final, err = build.Wait(ctx)
		}
		b.finalErr, build = err, nil
		var failed *kilnsdk.BuildFailedError
		ended := errors.As(b.finalErr, &failed) || errors.Is(b.finalErr, kilnsdk.ErrCancelled) || errors.Is(b.finalErr, kilnsdk.ErrTimedOut)
		if b.finalErr == nil || ended || ctx.Err() != nil || status.Code(b.finalErr) != codes.Unavailable {
			if b.final == nil {
				b.setWaiting(b.getWaiting() + fmt.Sprintf(" (watch error: %v)", b.finalErr))
			}
			return true
		}
		// The SDK used up its reconnects while the farm was unavailable:
		// a client that wants its result watches again.
		b.resumes++
	}
}

// chaosStrike kills k's victim, waits for the farm to take over (a new
// scheduler leader), pauses, restarts the victim and waits until it serves.
func chaosStrike(ctx context.Context, f *localFarm, k *chaosKill, start time.Time, inFlight func() int) error {
	switch k.what {
	case "scheduler leader":
		k.name = f.leader()
		if k.name == "" {
			if _, err := waitUntil(ctx, time.Minute, "a scheduler leader to kill", func() bool { return f.leader() != "" }); err != nil {
				return err
			}
			k.name = f.leader()
		}
	case "NATS node":
		k.name = randomName(f.named("nats"))
	case "agent":
		k.name = randomName(f.named("agent"))
	case "gateway":
		k.name = randomName(f.named("gateway"))
	}
	killed := time.Now()
	k.at, k.when, k.inFlight = killed.Sub(start), killed, inFlight()
	if err := f.Kill(k.name); err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	if k.what == "scheduler leader" {
		var others []string
		for _, p := range f.named("scheduler") {
			if p.Name != k.name {
				others = append(others, p.Name)
			}
		}
		if _, err := waitUntil(ctx, 2*time.Minute, "a new scheduler leader among "+strings.Join(others, ","), func() bool {
			return f.leader(others...) != ""
		}); err != nil {
			return err
		}
		k.recovered = time.Since(killed)
	}
	// The pause before the restart is workload: how long the victim stays down.
	select {
	case <-time.After(time.Duration(2+rand.IntN(5)) * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	restart := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := f.Restart(rctx, k.name); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if _, err := waitUntil(ctx, time.Minute, k.name+" serving after its restart", func() bool { return f.serving(k.name) }); err != nil {
		return err
	}
	k.restarted = time.Since(restart)
	if k.recovered == 0 {
		k.recovered = time.Since(killed)
	}
	return nil
}

func randomName(ps []localfarm.Process) string {
	if len(ps) == 0 {
		return ""
	}
	return ps[rand.IntN(len(ps))].Name
}

// chaosSummary counts the workload's outcome.
type chaosSummary struct {
	// accepted: StartBuild returned a build. completed: the farm ran it to
	// SUCCEEDED exactly once and the registry holds its push. duplicated:
	// more than one finished event, or more than one build for its tag.
	// lost: the farm did not complete it. clientErrors: the farm completed
	// it but its client did not see that whole (an error, a hang, a gap).
	accepted, completed, duplicated, lost, clientErrors int
	rejected, hung, resumes                             int
	rejections                                          []string
	failures                                            []chaosFailure // each failed check, for the test to report
}

// checkChaosBuilds checks every build of the workload (see
// TestChaosKillsUnderLoadLoseNoBuild for what must hold), counts them and
// lists, in sum.failures, each that does not hold for the test to report.
func checkChaosBuilds(t *testing.T, ctx context.Context, f *localFarm, c *kilnsdk.Client, reg, repo string, builds []*chaosBuild) chaosSummary {
	t.Helper()
	var sum chaosSummary

	// A build whose client gave up (its deadline passed on a slow farm)
	// may still be queued or running: the farm must still end it, so wait
	// for that before judging it, or a slow build reads as a lost one.
	if n, left, took := waitChaosBuildsEnd(ctx, c, builds, chaosEndWait); n > 0 {
		sum.failures = append(sum.failures, chaosFailure{check: "unfinished when their clients gave up",
			headline: fmt.Sprintf("%d accepted builds had not ended when their clients gave up; %d of them were still not ended %v later", n, left, took.Round(time.Second))})
	}

	// Every build record of the run, by tag: one each, or a build was
	// started twice for one request.
	records := map[string][]*kilnv1.Build{}
	for b, err := range c.List(ctx, kilnsdk.ListFilter{PageSize: 1000}) {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, tag := range b.GetSpec().GetTags() {
			if r, ok := strings.CutPrefix(tag, reg+"/"+repo+":"); ok {
				records[r] = append(records[r], b)
			}
		}
	}

	refusals := map[string]int{}
	var neverStarted []string // builds no client got to before its deadline
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, b := range builds {
		if b.hung {
			sum.hung++
			if b.id == "" {
				sum.clientErrors++
				if b.rejected != nil { // stuck in the upload or StartBuild
					sum.failures = append(sum.failures, chaosFailure{check: "client hung before its build started",
						headline: fmt.Sprintf("client %d hung past its deadline of %v before build %s started: %s (%v)", b.client, chaosClientDeadline, b.tag, b.waiting, firstLine(b.rejected.Error()))})
				} else {
					neverStarted = append(neverStarted, b.tag)
				}
				continue
			}
		}
		if b.rejected != nil {
			sum.rejected++
			msg := fmt.Sprintf("%v: %s", status.Code(b.rejected), firstLine(b.rejected.Error()))
			if n := len(records[b.tag]); n > 0 {
				msg += fmt.Sprintf(" (the farm holds %d build(s) for its tag anyway)", n)
			}
			refusals[msg]++
			continue
		}
		if b.id == "" {
			continue // never reached StartBuild
		}
		sum.accepted++
		sum.resumes += b.resumes
		twins := len(records[b.tag])
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			farm, client := checkChaosBuild(ctx, f, c, reg, repo, b)
			if twins != 1 {
				var ids []string
				for _, r := range records[b.tag] {
					ids = append(ids, r.GetId()+" "+r.GetState().String())
				}
				farm = fmt.Sprintf("duplicated: %d build records carry its tag: %v", twins, ids)
			}
			mu.Lock()
			defer mu.Unlock()
			failed := func(check, what string) {
				sum.failures = append(sum.failures, chaosFailure{check: check, headline: firstLine(what), detail: what})
			}
			switch {
			case farm == "completed":
				sum.completed++
			case strings.HasPrefix(farm, "duplicated"):
				sum.duplicated++
				failed("duplicated", fmt.Sprintf("build %s (%s) %s", b.tag, b.id, farm))
			default:
				sum.lost++
				failed("lost", fmt.Sprintf("build %s (%s) lost: %s", b.tag, b.id, farm))
			}
			if client != "" {
				sum.clientErrors++
				failed("client did not see its build whole", fmt.Sprintf("build %s (%s), client %d: %s", b.tag, b.id, b.client, client))
			}
		}()
	}
	wg.Wait()
	if len(neverStarted) > 0 {
		sum.failures = append(sum.failures, chaosFailure{check: "never started", headline: fmt.Sprintf("%d builds never started: their clients' deadlines had passed (%s … %s)", len(neverStarted), neverStarted[0], neverStarted[len(neverStarted)-1])})
	}
	for msg, n := range refusals {
		sum.rejections = append(sum.rejections, fmt.Sprintf("%d× %s", n, msg))
	}
	sort.Strings(sum.rejections)
	return sum
}

// chaosEndWait bounds how long after the workload the farm may take to
// end the builds whose clients gave up: about what 20 of them take on an
// idle farm of three agents, times three for a loaded machine.
const chaosEndWait = 3 * time.Minute

// waitChaosBuildsEnd waits, at most within, until every accepted build
// whose client did not see it end has a terminal record, reading each
// once a second; it returns how many such builds there were, how many of
// them have still not ended, and how long it waited.
func waitChaosBuildsEnd(ctx context.Context, c *kilnsdk.Client, builds []*chaosBuild, within time.Duration) (n, left int, took time.Duration) {
	pending := map[string]bool{}
	for _, b := range builds {
		if b.id != "" && b.rejected == nil && b.final == nil {
			pending[b.id] = true
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	n = len(pending)
	for len(pending) > 0 {
		for id := range pending {
			gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
			rec, err := c.Get(gctx, id)
			gcancel()
			if err == nil && buildstore.Terminal(rec.GetState()) {
				delete(pending, id)
			}
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return n, len(pending), time.Since(start)
		case <-tick.C:
		}
	}
	return n, 0, time.Since(start)
}

// checkChaosBuild checks one accepted build on the farm's side — its
// record, its whole event log, the registry — and on its client's side —
// what the client's watch delivered against a replay from sequence 0. farm
// is "completed" (SUCCEEDED exactly once, its one tag pushed and in the
// registry), "duplicated: …" (more than one finished event) or what went
// wrong; client is "" or what the client missed.
func checkChaosBuild(ctx context.Context, f *localFarm, c *kilnsdk.Client, reg, repo string, b *chaosBuild) (farm, client string) {
	farm = checkChaosFarm(ctx, f, c, reg, repo, b)

	switch {
	case b.hung:
		return farm, fmt.Sprintf("the client hung past its deadline of %v after %d events: %s\n%s",
			chaosClientDeadline, len(b.events), b.waiting, farmView(ctx, f, c, b.id))
	case b.final == nil:
		return farm, fmt.Sprintf("the client's watch failed after %d events (%v)\n%s",
			len(b.events), b.finalErr, farmView(ctx, f, c, b.id))
	case b.final.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		return farm, fmt.Sprintf("the client saw it end %v: %s\nits events:\n%s", b.final.GetState(), b.final.GetError(), eventsString(b.events))
	}
	// What the client saw is the log from sequence 1, no gap, no
	// duplicate: the same as a replay from sequence 0.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rep, err := replay(rctx, c, b.id)
	if err != nil {
		return farm, fmt.Sprintf("replaying its events from sequence 0: %v", err)
	}
	if !sameEvents(b.events, rep) {
		return farm, fmt.Sprintf("the client's watch differs from a replay from sequence 0\nclient:\n%s\nreplay:\n%s",
			eventsString(b.events), eventsString(rep))
	}
	return farm, ""
}

// checkChaosFarm says how the farm ended a build: "completed", or
// "duplicated: …", or what went wrong.
func checkChaosFarm(ctx context.Context, f *localFarm, c *kilnsdk.Client, reg, repo string, b *chaosBuild) string {
	var rec *kilnv1.Build
	var err error
	// A read may race a replica that lags (see the report); a record
	// missing for 10s is missing.
	_, _ = waitUntil(ctx, 10*time.Second, "the build's record", func() bool {
		rec, err = c.Get(ctx, b.id)
		return err == nil
	})
	if err != nil {
		return fmt.Sprintf("Get: %v\n%s", err, farmView(ctx, f, c, b.id))
	}
	if st := rec.GetState(); st != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		return fmt.Sprintf("its record says %v: %s\n%s", st, rec.GetError(), farmView(ctx, f, c, b.id))
	}
	// The whole log as the farm stored it: exactly one finished event.
	raw, err := f.rawEventLog(ctx, b.id)
	if err != nil {
		return fmt.Sprintf("reading its event log: %v", err)
	}
	fin := finishedEvents(raw)
	if len(fin) > 1 {
		return fmt.Sprintf("duplicated: %d finished events in its event log, want exactly one:\n%s", len(fin), eventsString(raw))
	}
	if len(fin) == 0 || fin[0].GetFinished().GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		return fmt.Sprintf("its record says SUCCEEDED but its event log does not end so:\n%s", eventsString(raw))
	}
	// WatchBuild stops at the finished event: anything after it no client
	// ever sees.
	if last := raw[len(raw)-1]; last.GetFinished() == nil {
		return fmt.Sprintf("its event log goes on past its finished event (a watch never shows those):\n%s", eventsString(raw))
	}
	// One pushed digest for its one tag, and the registry holds it.
	pushed := rec.GetResult().GetPushed()
	if len(pushed) != 1 || pushed[0].GetDigest() == "" {
		return fmt.Sprintf("SUCCEEDED with pushed %v, want its one tag", pushed)
	}
	if fp := fin[0].GetFinished().GetResult().GetPushed(); len(fp) != 1 || fp[0].GetDigest() != pushed[0].GetDigest() {
		return fmt.Sprintf("the record says it pushed %v, its finished event %v", pushed, fp)
	}
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got, err := manifestDigest(hctx, reg, repo, b.tag)
	switch {
	case err != nil:
		return fmt.Sprintf("asking the registry for %s:%s: %v", repo, b.tag, err)
	case got == "":
		return fmt.Sprintf("SUCCEEDED but the registry has no %s:%s", repo, b.tag)
	case got != pushed[0].GetDigest():
		return fmt.Sprintf("the registry holds %s for its tag, the record says %s was pushed", got, pushed[0].GetDigest())
	}
	return "completed"
}

// farmView says what the farm holds for a build: its record and its raw
// event log, for a client that did not see the build end.
func farmView(ctx context.Context, f *localFarm, c *kilnsdk.Client, id string) string {
	var b strings.Builder
	rec, err := c.Get(ctx, id)
	if err != nil {
		fmt.Fprintf(&b, "Get: %v\n", err)
	} else {
		fmt.Fprintf(&b, "its record: %v attempt %d agent %q error %q\n", rec.GetState(), rec.GetAttempt(), rec.GetAgent(), rec.GetError())
	}
	raw, err := f.rawEventLog(ctx, id)
	if err != nil {
		fmt.Fprintf(&b, "its event log: %v\n", err)
	} else {
		fmt.Fprintf(&b, "its event log in KILN_EVENTS (%d events):\n%s", len(raw), eventsString(raw))
	}
	return b.String()
}

// sameEvents reports whether two event lists are equal, event by event.
func sameEvents(a, b []*kilnv1.BuildEvent) bool {
	return slices.EqualFunc(a, b, func(x, y *kilnv1.BuildEvent) bool { return proto.Equal(x, y) })
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
