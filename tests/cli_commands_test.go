package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// The everyday commands against a real farm (the shared kilnd) and the real
// kiln binary: find a build (ls), follow it from another terminal (logs
// -f), inspect, cancel and retry it, and what Ctrl-C and --timeout do.

// TestCLIBuildPrintsWhatLogsReplays runs `kiln build --progress plain` and
// then `kiln logs ID`: the replayed log prints exactly the lines the build
// printed from its events (all but the context summary sent before the
// build existed).
func TestCLIBuildPrintsWhatLogsReplays(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	marker := "replay-" + uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN for i in 1 2 3; do echo " + marker + "-$i; done\nRUN echo two > /two\n"})
	b := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", dir)
	if b.code != 0 {
		t.Fatalf("kiln build: %s", b)
	}
	id := buildIDOf(t, strings.Split(b.stderr, "\n"))
	l := kiln(t, k.addrs.GRPC, "logs", id)
	if l.code != 0 {
		t.Fatalf("kiln logs %s: %s", id, l)
	}
	built, replayed := eventLines(b.stderr), strings.Split(strings.TrimRight(l.stderr, "\n"), "\n")
	if !slices.Equal(built, replayed) {
		t.Fatalf("kiln logs %s printed\n%s\n\nkiln build printed\n%s", id, l.stderr, strings.Join(built, "\n"))
	}
	mustContain(t, l.stderr, marker+"-3", "kiln logs")
	mustContain(t, l.stderr, "kiln: build "+id+" succeeded", "kiln logs")
	if l.stdout != "" {
		t.Fatalf("kiln logs wrote to stdout in plain mode: %q", l.stdout)
	}
}

// TestCLIDetachThenFollow starts a build with --detach, finds it with
// `kiln ls --state running`, inspects it while it runs, and follows it
// with `kiln logs -f` from its start to its end: the followed log is the
// one `kiln logs` replays afterwards (the one `kiln build` prints, see
// TestCLIBuildPrintsWhatLogsReplays), every numbered line once, in order.
func TestCLIDetachThenFollow(t *testing.T) {
	const lines = 40
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	marker := "detach-" + uniq()
	d := kiln(t, gw, "build", "--detach", "--progress", "plain", slowBuild(t, enginetest.BusyboxBase(t), marker, lines))
	if d.code != 0 {
		t.Fatalf("kiln build --detach: %s", d)
	}
	id := strings.TrimSpace(d.stdout)
	if id == "" || strings.ContainsAny(id, " \n") {
		t.Fatalf("kiln build --detach printed %q on stdout, want the build id alone", d.stdout)
	}
	follow := startKiln(t, ctx, gw, "logs", "-f", id)

	if _, err := waitUntil(ctx, 2*time.Minute, "kiln ls --state running to list "+id, func() bool {
		r := kiln(t, gw, "ls", "--state", "running", "--format", "{{.ID}} {{.State}} {{.Agent}}")
		return r.code == 0 && slices.Contains(strings.Split(r.stdout, "\n"), id+" running e2e-agent")
	}); err != nil {
		t.Fatal(err)
	}
	if r := kiln(t, gw, "ls", "--state", "succeeded,failed", "--format", "{{.ID}}"); slices.Contains(strings.Split(r.stdout, "\n"), id) {
		t.Fatalf("kiln ls --state succeeded,failed lists the running build %s:\n%s", id, r)
	}
	rec := inspectBuild(t, gw, id)
	attempts, _ := rec["attempts"].([]any)
	if rec["agent"] != "e2e-agent" || len(attempts) != 1 || attempts[0].(map[string]any)["agent"] != "e2e-agent" {
		t.Fatalf("kiln inspect %s does not name agent e2e-agent in agent and attempts: %v", id, rec)
	}

	f := follow.wait(t, ctx)
	if f.code != 0 {
		t.Fatalf("kiln logs -f %s: %s", id, f)
	}
	numbered := regexp.MustCompile("^" + regexp.QuoteMeta(marker) + `-\d+$`)
	var got []string
	for _, l := range strings.Split(f.stderr, "\n") {
		if numbered.MatchString(l) {
			got = append(got, l)
		}
	}
	var want []string
	for i := 1; i <= lines; i++ {
		want = append(want, fmt.Sprintf("%s-%d", marker, i))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("kiln logs -f printed the numbered lines\n%s\nwant each of 1…%d once, in order; whole output:\n%s", strings.Join(got, "\n"), lines, f.stderr)
	}
	l := kiln(t, gw, "logs", id)
	if l.code != 0 || l.stderr != f.stderr+"\n" {
		t.Fatalf("kiln logs %s (replay, exit %d) printed\n%s\n\nkiln logs -f (live) printed\n%s", id, l.code, l.stderr, f.stderr)
	}
}

// TestCLICancel cancels a running build with `kiln cancel` from another
// command: it ends CANCELLED, the listing and the replayed log say so.
func TestCLICancel(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	d := kiln(t, gw, "build", "--detach", slowBuild(t, enginetest.BusyboxBase(t), "cancel-"+uniq(), 600))
	if d.code != 0 {
		t.Fatalf("kiln build --detach: %s", d)
	}
	id := strings.TrimSpace(d.stdout)
	waitState(t, ctx, gw, id, "BUILD_STATE_RUNNING")

	c := kiln(t, gw, "cancel", id)
	if c.code != 0 || c.stdout != id+"\n" {
		t.Fatalf("kiln cancel %s: %s", id, c)
	}
	// kiln cancel returns once the build has ended.
	if rec := inspectBuild(t, gw, id); rec["state"] != "BUILD_STATE_CANCELLED" {
		t.Fatalf("after kiln cancel, build %s is %v", id, rec["state"])
	}
	if r := kiln(t, gw, "ls", "--state", "cancelled", "--format", "{{.ID}} {{.State}}"); !slices.Contains(strings.Split(r.stdout, "\n"), id+" cancelled") {
		t.Fatalf("kiln ls --state cancelled does not list %s: %s", id, r)
	}
	l := kiln(t, gw, "logs", id)
	if l.code != 1 || !strings.Contains(l.stderr, "kiln: build "+id+" cancelled") {
		t.Fatalf("kiln logs of the cancelled build %s: want exit 1 and its cancellation: %s", id, l)
	}
	// Cancelling it again is no error: it has ended.
	if again := kiln(t, gw, "cancel", id); again.code != 0 || again.stdout != id+"\n" {
		t.Fatalf("kiln cancel of the cancelled build %s: %s", id, again)
	}
}

// TestCLIInterruptCancelsBuild sends SIGINT to `kiln build`: the build ends
// CANCELLED on the farm and the CLI exits 130.
func TestCLIInterruptCancelsBuild(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	marker := "sigint-" + uniq()
	p := startKiln(t, ctx, gw, "build", "--progress", "plain", slowBuild(t, enginetest.BusyboxBase(t), marker, 600))
	p.waitPrinted(t, ctx, 3*time.Minute, regexp.MustCompile("^"+marker+"-3$"))
	id := buildIDOf(t, p.stderrLines())
	p.interrupt(t)
	r := p.wait(t, ctx)
	if r.code != 130 {
		t.Fatalf("kiln build after SIGINT: want exit 130: %s", r)
	}
	mustContain(t, r.stderr, "kiln: cancelling build "+id, "kiln build's output")
	mustContain(t, r.stderr, "kiln: build "+id+" cancelled", "kiln build's output")
	waitState(t, ctx, gw, id, "BUILD_STATE_CANCELLED")
}

// TestCLIIdempotencyKeyTwiceConcurrently runs two `kiln build` with the
// same --idempotency-key at once: the farm runs one build, and both CLIs
// print its digest, the registry's.
func TestCLIIdempotencyKeyTwiceConcurrently(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	reg := enginetest.Registry(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	repo, tag := "kiln-e2e/idempotent", "t"+uniq()
	ref := reg + "/" + repo + ":" + tag
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + enginetest.BusyboxBase(t) + "\nRUN echo " + uniq() + " > /f\n"})
	key := "idem-" + uniq()
	var procs []*kilnProc
	for range 2 {
		procs = append(procs, startKiln(t, ctx, gw, "build", "--progress", "quiet", "--idempotency-key", key, "--push", "-t", ref, dir))
	}
	var digests []string
	for i, p := range procs {
		r := p.wait(t, ctx)
		if r.code != 0 {
			t.Fatalf("kiln build %d: %s", i+1, r)
		}
		digests = append(digests, strings.TrimSpace(r.stdout))
	}
	want := enginetest.ManifestDigest(t, reg, repo, tag)
	if digests[0] != want || digests[1] != want {
		t.Fatalf("the two CLIs printed %q and %q; the registry holds %s", digests[0], digests[1], want)
	}
	r := kiln(t, gw, "ls", "--tag", ref, "--limit", "0", "--format", "{{.ID}}")
	if ids := strings.Fields(r.stdout); r.code != 0 || len(ids) != 1 {
		t.Fatalf("kiln ls --tag %s: want one build on the farm: %s", ref, r)
	}
}

// TestCLIRetry retries a finished build: a new build of the same spec and
// context, which the farm records as a retry of the first.
func TestCLIRetry(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	marker := "retry-" + uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + enginetest.BusyboxBase(t) + "\nRUN echo " + marker + "\n"})
	b := kiln(t, gw, "build", "--progress", "plain", dir)
	if b.code != 0 {
		t.Fatalf("kiln build: %s", b)
	}
	first := buildIDOf(t, strings.Split(b.stderr, "\n"))
	d := kiln(t, gw, "retry", "--detach", first)
	second := strings.TrimSpace(d.stdout)
	if d.code != 0 || second == "" || second == first {
		t.Fatalf("kiln retry --detach %s: want a new build's id: %s", first, d)
	}
	l := kiln(t, gw, "logs", "-f", second)
	if l.code != 0 {
		t.Fatalf("kiln logs -f %s: %s", second, l)
	}
	rec := inspectBuild(t, gw, second)
	if rec["retryOf"] != first || rec["state"] != "BUILD_STATE_SUCCEEDED" {
		t.Fatalf("the retry %s: want a succeeded retry of %s: %v", second, first, rec)
	}
	// Followed, the retry prints its new id and its log.
	f := kiln(t, gw, "retry", "--progress", "plain", second)
	if f.code != 0 || !strings.Contains(f.stderr, "retries build "+second) || !strings.Contains(f.stderr, " succeeded") {
		t.Fatalf("kiln retry %s: %s", second, f)
	}
	if nf := kiln(t, gw, "retry", "--detach", "b0000000000000000000000000"); nf.code != 1 || !strings.Contains(nf.stderr, "does not exist") {
		t.Fatalf("kiln retry of an unknown build: want exit 1 and a NotFound message: %s", nf)
	}
}

// TestCLIBuildTimeout gives a long build --timeout: the farm cancels it,
// marks it timed out, and the CLI exits 124.
func TestCLIBuildTimeout(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	r := kiln(t, gw, "build", "--progress", "plain", "--timeout", "3s", slowBuild(t, enginetest.BusyboxBase(t), "timeout-"+uniq(), 600))
	if r.code != 124 {
		t.Fatalf("kiln build --timeout 3s of a long build: want exit 124: %s", r)
	}
	id := buildIDOf(t, strings.Split(r.stderr, "\n"))
	rec := waitState(t, ctx, gw, id, "BUILD_STATE_CANCELLED")
	if rec["timedOut"] != true {
		t.Fatalf("build %s ended without timedOut: %v", id, rec)
	}
	if row := kiln(t, gw, "ls", "--format", "{{.ID}} {{.State}}", "--limit", "0"); !slices.Contains(strings.Split(row.stdout, "\n"), id+" timed out") {
		t.Fatalf("kiln ls does not show %s as timed out: %s", id, row)
	}
}

// TestCLIVersionAndNotFound asks the farm its versions, and names a build
// that does not exist to logs, inspect and cancel.
func TestCLIVersionAndNotFound(t *testing.T) {
	k := sharedKilnd(t)
	gw := k.addrs.GRPC
	v := kiln(t, gw, "version")
	if v.code != 0 {
		t.Fatalf("kiln version: %s", v)
	}
	for _, want := range []string{"kiln version ", "Farm at " + gw, "gateway", "scheduler", "e2e-agent"} {
		mustContain(t, v.stdout, want, "kiln version")
	}
	j := kiln(t, gw, "version", "--format", "json")
	var info struct {
		Client struct{ Version string }
		Farm   struct {
			GatewayVersion string `json:"gatewayVersion"`
			Agents         []struct {
				Name          string `json:"name"`
				EngineVersion string `json:"engineVersion"`
			} `json:"agents"`
		}
	}
	if err := json.Unmarshal([]byte(j.stdout), &info); err != nil || j.code != 0 {
		t.Fatalf("kiln version --format json: %v: %s", err, j)
	}
	if info.Client.Version == "" || info.Farm.GatewayVersion == "" || len(info.Farm.Agents) != 1 || info.Farm.Agents[0].Name != "e2e-agent" || info.Farm.Agents[0].EngineVersion == "" {
		t.Fatalf("kiln version --format json: want client and gateway versions and agent e2e-agent with its engine: %s", j.stdout)
	}

	missing := "b0000000000000000000000000"
	for _, args := range [][]string{{"logs", missing}, {"logs", "-f", missing}, {"inspect", missing}, {"cancel", missing}} {
		r := kiln(t, gw, args...)
		if r.code != 1 || !strings.Contains(r.stderr, `no build "`+missing+`": it does not exist`) {
			t.Errorf("kiln %v: want exit 1 and a clear NotFound message: %s", args, r)
		}
	}
}
