package cli

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

// runningApp is a kiln command running in the background against a test
// farm, with an interrupt channel the test sends Ctrl-C on.
type runningApp struct {
	interrupts chan os.Signal
	done       chan struct{}
	code       int
	mu         sync.Mutex
	stdout     bytes.Buffer
	stderr     bytes.Buffer
}

// syncWriter serialises writes of the command's goroutines to a buffer the
// test reads.
type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startApp(t *testing.T, args ...string) *runningApp {
	t.Helper()
	r := &runningApp{interrupts: make(chan os.Signal, 2), done: make(chan struct{})}
	a := &App{Stdout: syncWriter{&r.mu, &r.stdout}, Stderr: syncWriter{&r.mu, &r.stderr}, LookupEnv: envOf(nil), Interrupts: r.interrupts}
	go func() {
		defer close(r.done)
		r.code = a.Run(t.Context(), args)
	}()
	t.Cleanup(func() { <-r.done })
	return r
}

func (r *runningApp) wait(t *testing.T) (int, string, string) {
	t.Helper()
	select {
	case <-r.done:
	case <-t.Context().Done():
		t.Fatal("the command did not end")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.code, r.stdout.String(), r.stderr.String()
}

func (r *runningApp) stderrText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stderr.String()
}

// detachedBuild starts a held build on farm with `kiln build --detach` and
// returns its id.
func detachedBuild(t *testing.T, farm *farmtest.Farm, extra ...string) string {
	t.Helper()
	args := append([]string{"build", "--detach", "--progress", "plain", "--gateway", farm.Addr}, extra...)
	code, stdout, stderr := run(t, nil, append(args, contextDir(t))...)
	if code != ExitOK {
		t.Fatalf("kiln build --detach: exit %d: %s", code, stderr)
	}
	id := strings.TrimSpace(stdout)
	if len(farm.Builds()) != 1 || farm.Builds()[0].GetId() != id {
		t.Fatalf("kiln build --detach printed %q; the farm holds %v", stdout, farm.Builds())
	}
	return id
}

func TestBuildDetachSendsTimeout(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t, farmtest.WithHeldBuilds())
	detachedBuild(t, farm, "--timeout", "90s")
	if got := farm.Builds()[0].GetSpec().GetTimeout().AsDuration(); got != 90*time.Second {
		t.Fatalf("the build's spec.timeout is %v, want 90s", got)
	}
	// The command stopped following when it printed the id.
	if err := farm.Await(t.Context(), func() bool { return farm.Watching() == 0 }); err != nil {
		t.Fatalf("kiln build --detach left %d watches open", farm.Watching())
	}
	for _, bad := range []string{"-1s", "25h", "soon"} {
		code, _, stderr := run(t, nil, "build", "--timeout", bad, "--gateway", farm.Addr, contextDir(t))
		if code != ExitUsage || !strings.Contains(stderr, "--timeout") {
			t.Errorf("kiln build --timeout %s: exit %d, stderr %q; want a usage error", bad, code, stderr)
		}
	}
}

// TestLogs reads a held build's log while it runs (the log so far, exit
// 0), from a sequence on, and follows it with -f to its end.
func TestLogs(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t, farmtest.WithHeldBuilds())
	id := detachedBuild(t, farm)
	farm.Log(id, "first line")
	second := farm.Log(id, "second line")

	code, stdout, stderr := run(t, nil, "logs", "--gateway", farm.Addr, id)
	if code != ExitOK || stdout != "" || !strings.Contains(stderr, "first line\nsecond line\n") || strings.Contains(stderr, "succeeded") {
		t.Fatalf("kiln logs of a running build: exit %d\nstdout %q\nstderr %q\nwant its log so far on stderr", code, stdout, stderr)
	}
	_, _, stderr = run(t, nil, "logs", "--gateway", farm.Addr, "--since-sequence", strconv.FormatUint(second, 10), id)
	if strings.Contains(stderr, "first line") || !strings.Contains(stderr, "second line") {
		t.Fatalf("kiln logs --since-sequence %d printed %q, want the log from the second line", second, stderr)
	}

	follow := startApp(t, "logs", "-f", "--gateway", farm.Addr, id)
	if err := farm.Await(t.Context(), func() bool { return farm.Watching() == 1 }); err != nil {
		t.Fatal(err)
	}
	farm.Log(id, "third line")
	farm.Finish(id, kilnv1.BuildState_BUILD_STATE_FAILED)
	code, _, stderr = follow.wait(t)
	if code != ExitFailed || !strings.Contains(stderr, "second line\nthird line\n") || !strings.Contains(stderr, "build "+id+" failed") {
		t.Fatalf("kiln logs -f to a failed end: exit %d, stderr %q; want exit %d and the whole log", code, stderr, ExitFailed)
	}
}

// TestLogsInterrupt stops following on Ctrl-C with exit 130 and leaves
// the build alone.
func TestLogsInterrupt(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t, farmtest.WithHeldBuilds())
	id := detachedBuild(t, farm)
	follow := startApp(t, "logs", "-f", "--gateway", farm.Addr, id)
	if err := farm.Await(t.Context(), func() bool { return farm.Watching() == 1 }); err != nil {
		t.Fatal(err)
	}
	follow.interrupts <- os.Interrupt
	if code, _, stderr := follow.wait(t); code != ExitInterrupted {
		t.Fatalf("kiln logs -f after an interrupt: exit %d, want %d: %s", code, ExitInterrupted, stderr)
	}
	if st := farm.Builds()[0].GetState(); st != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatalf("kiln logs -f's interrupt left the build %v, want it running", st)
	}
}

// TestBuildInterrupts checks kiln build's Ctrl-C: the first asks the farm
// to cancel and follows the build to its end (exit 130 once CANCELLED);
// a second stops following at once (exit 130) and says how to re-attach.
func TestBuildInterrupts(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	for _, twice := range []bool{false, true} {
		name := map[bool]string{false: "once", true: "twice"}[twice]
		t.Run(name, func(t *testing.T) {
			farm := farmtest.Start(t, farmtest.WithHeldBuilds())
			b := startApp(t, "build", "--progress", "plain", "--gateway", farm.Addr, contextDir(t))
			if err := farm.Await(t.Context(), func() bool { return farm.Watching() == 1 }); err != nil {
				t.Fatal(err)
			}
			id := farm.Builds()[0].GetId()
			b.interrupts <- os.Interrupt
			eventually(t, "the cancelling line", func() bool { return strings.Contains(b.stderrText(), "cancelling build "+id) })
			if twice {
				b.interrupts <- os.Interrupt
			} else {
				farm.Finish(id, kilnv1.BuildState_BUILD_STATE_CANCELLED)
			}
			code, _, stderr := b.wait(t)
			if code != ExitInterrupted {
				t.Fatalf("exit %d, want %d: %s", code, ExitInterrupted, stderr)
			}
			if hint := "re-attach with: kiln logs -f " + id; twice != strings.Contains(stderr, hint) {
				t.Fatalf("interrupted %s, the output has the hint %q: %t, want %t:\n%s", name, hint, !twice, twice, stderr)
			}
		})
	}
}

// eventually polls cond until it holds, failing the test when its context
// ends first.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-t.Context().Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-tick.C:
		}
	}
}
