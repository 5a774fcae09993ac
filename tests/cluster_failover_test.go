package tests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestGatewayFailoverKeepsCLIBuildWhole runs `kiln build --progress plain`
// with KILN_GATEWAY naming two gateways, on a build whose RUN prints
// numbered lines for a few seconds, and SIGKILLs the gateway that took the
// build while the CLI streams its output. The CLI must carry on through the
// other gateway and exit 0, having printed every numbered line exactly
// once, in order, and every log line of the build's whole log (replayed
// afterwards from sequence 0) in the log's order.
func TestGatewayFailoverKeepsCLIBuildWhole(t *testing.T) {
	const lines = 40
	base := enginetest.BusyboxBase(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	f := startLocalFarm(t, ctx, localfarm.Options{NATS: 1, Gateways: 2, Schedulers: 1, Agents: 1, Images: []string{base}})
	gws := f.GatewayAddrs()
	if len(gws) != 2 {
		t.Fatalf("farm gateways %v, want 2", gws)
	}

	marker := "failover-" + uniq()
	// The sleeps pace the build's output (workload), so that the kill
	// lands mid-stream; nothing in the test waits on them.
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(
		"FROM %s\nRUN for i in $(seq 1 %d); do echo %s-$i; sleep 0.2; done\n", base, lines, marker)})
	cmd := exec.CommandContext(ctx, kilnBin, "build", "--progress", "plain", "--debug", dir) // --debug: every line of the log, the farm's bookkeeping too
	cmd.Env = append(os.Environ(), "KILN_GATEWAY="+strings.Join(gws, ","), "KILN_CACHE_DIR="+t.TempDir())
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The CLI's progress (stderr in plain mode), line by line as it comes.
	var out struct {
		sync.Mutex
		lines []string
	}
	printed := func() []string {
		out.Lock()
		defer out.Unlock()
		return append([]string(nil), out.lines...)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stderrPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			out.Lock()
			out.lines = append(out.lines, sc.Text())
			out.Unlock()
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-readDone // Wait closes the pipe: read it all first
		exited <- cmd.Wait()
	}()

	// The build runs once the CLI prints its third numbered line.
	third := fmt.Sprintf("%s-3", marker)
	if _, err := waitUntil(ctx, 3*time.Minute, "the CLI to print "+third, func() bool {
		select {
		case <-readDone:
			return true
		default:
		}
		for _, l := range printed() {
			if l == third {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("%v; it printed:\n%s", err, strings.Join(printed(), "\n"))
	}
	select {
	case <-readDone:
		t.Fatalf("the CLI ended before the kill: %v\nstdout:\n%s\nstderr:\n%s", <-exited, stdout.String(), strings.Join(printed(), "\n"))
	default:
	}

	// Kill the gateway the CLI started the build through.
	victim := ""
	for _, p := range f.named("gateway") {
		if v, err := metricValue(p.HTTP, `kiln_gateway_builds_started_total{kind="queued"}`); err == nil && v > 0 {
			victim = p.Name
		}
	}
	if victim == "" {
		t.Fatalf("no gateway counts the CLI's build in kiln_gateway_builds_started_total")
	}
	if err := f.Kill(victim); err != nil {
		t.Fatalf("kill %s: %v", victim, err)
	}
	killedAt := len(printed())
	survivor := f.named("gateway")[0]
	if survivor.Name == victim {
		survivor = f.named("gateway")[1]
	}
	t.Logf("killed %s after the CLI printed %d lines; %s remains", victim, killedAt, survivor.Name)

	var runErr error
	select {
	case runErr = <-exited:
	case <-ctx.Done():
		t.Fatalf("the CLI did not exit after the gateway kill (%v); it printed:\n%s", ctx.Err(), strings.Join(printed(), "\n"))
	}
	got := printed()
	if runErr != nil {
		var exitErr *exec.ExitError
		if !errors.As(runErr, &exitErr) {
			t.Fatalf("kiln build: %v", runErr)
		}
		t.Fatalf("kiln build exited %d after the gateway kill; stdout:\n%s\nstderr:\n%s", exitErr.ExitCode(), stdout.String(), strings.Join(got, "\n"))
	}

	// Every numbered line exactly once, in order.
	numbered := regexp.MustCompile("^" + regexp.QuoteMeta(marker) + `-\d+$`)
	var nums []string
	for _, l := range got {
		if numbered.MatchString(l) {
			nums = append(nums, l)
		}
	}
	var want []string
	for i := 1; i <= lines; i++ {
		want = append(want, fmt.Sprintf("%s-%d", marker, i))
	}
	if strings.Join(nums, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the CLI printed the numbered lines\n%s\nwant %s-1 … %s-%d once each, in order; whole output:\n%s",
			strings.Join(nums, "\n"), marker, marker, lines, strings.Join(got, "\n"))
	}

	// The build's whole log, replayed through the surviving gateway, is
	// what the CLI printed: each log line, in order, none missing.
	var id string
	succeeded := regexp.MustCompile(`^kiln: build (\S+) succeeded`)
	for _, l := range got {
		if m := succeeded.FindStringSubmatch(l); m != nil {
			id = m[1]
		}
	}
	if id == "" {
		t.Fatalf("the CLI exited 0 without a \"build … succeeded\" line:\n%s", strings.Join(got, "\n"))
	}
	c := dialFarm(t, []string{survivor.Addr})
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	defer rcancel()
	evs, err := replay(rctx, c, id)
	if err != nil {
		t.Fatalf("replay build %s: %v", id, err)
	}
	if len(evs) == 0 || evs[len(evs)-1].GetFinished().GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("the replay of build %s does not end SUCCEEDED:\n%s", id, eventsString(evs))
	}
	var logLines []string
	for _, ev := range evs {
		if l := ev.GetLog(); l != nil {
			logLines = append(logLines, strings.TrimSuffix(l.GetText(), "\n"))
		}
	}
	var replayed []string
	for _, l := range logLines {
		if numbered.MatchString(l) {
			replayed = append(replayed, l)
		}
	}
	if strings.Join(replayed, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the replayed log of build %s holds the numbered lines\n%s\nwant each once, in order (did the build run twice?)", id, strings.Join(replayed, "\n"))
	}
	if missing := notInOrder(logLines, got); missing != "" {
		t.Fatalf("the CLI's output lacks the log line %q of the replay at its place\nreplayed log:\n%s\nCLI output:\n%s",
			missing, strings.Join(logLines, "\n"), strings.Join(got, "\n"))
	}
	t.Logf("build %s: the CLI printed all %d log lines of its log, %d numbered lines once each, through the kill of %s", id, len(logLines), lines, victim)
}

// notInOrder returns the first line of want that is not found in got after
// the previous one's match ("" if want is a subsequence of got).
func notInOrder(want, got []string) string {
	i := 0
	for _, w := range want {
		for i < len(got) && got[i] != w {
			i++
		}
		if i == len(got) {
			return w
		}
		i++
	}
	return ""
}
