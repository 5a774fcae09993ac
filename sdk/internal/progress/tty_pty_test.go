package progress

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

// kilnBinary is the kiln CLI, built once for the tests that run it.
var kilnBinary struct {
	once sync.Once
	path string
	err  error
}

// buildKiln builds sdk/cmd/kiln, once for the test binary, into a
// directory TestMain removes.
func buildKiln(t *testing.T) string {
	t.Helper()
	kilnBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-progress-bin-")
		if err != nil {
			kilnBinary.err = err
			return
		}
		kilnBinary.path = filepath.Join(dir, "kiln")
		out, err := exec.Command("go", "build", "-o", kilnBinary.path, "github.com/kilnbuild/kiln/sdk/cmd/kiln").CombinedOutput()
		if err != nil {
			kilnBinary.err = errors.New("go build kiln: " + err.Error() + "\n" + string(out))
		}
	})
	if kilnBinary.err != nil {
		t.Fatal(kilnBinary.err)
	}
	return kilnBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kilnBinary.path != "" {
		os.RemoveAll(filepath.Dir(kilnBinary.path))
	}
	os.Exit(code)
}

// ptyRun is one run of the kiln CLI on a pseudo-terminal.
type ptyRun struct {
	code   int
	output string // all the terminal received
}

// runInPTY runs kiln with args on a new pseudo-terminal of columns×rows
// (its stdin, stdout and stderr) with env added to the test's, and
// returns what it wrote once it exited.
func runInPTY(t *testing.T, ctx context.Context, columns, rows int, env []string, args ...string) ptyRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, buildKiln(t), args...)
	cmd.Env = append(os.Environ(), env...)
	// The child must be its terminal's session leader for the pty to be
	// its controlling terminal; a context's end kills it by pid.
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: uint16(columns), Rows: uint16(rows)})
	if err != nil {
		t.Fatalf("start kiln on a pty: %v", err)
	}
	defer f.Close()
	var out bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, f)
		copied <- err
	}()
	werr := cmd.Wait()
	// Once the child exited, reading the pty's master ends with EIO when
	// all it wrote has been read.
	if err := <-copied; err != nil && !errors.Is(err, syscall.EIO) {
		t.Fatalf("read the pty: %v", err)
	}
	r := ptyRun{output: out.String()}
	var exit *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("run kiln %v: %v", args, werr)
	}
	return r
}

// TestTTYOnAPseudoTerminal runs `kiln build --progress tty` on a
// pseudo-terminal against a real farm (kilnd with its agent on the local
// Docker engine) and reads the screen the terminal shows at the end: the
// view must have been redrawn in place and collapsed to a summary naming
// every step with its state, first built, then cached.
func TestTTYOnAPseudoTerminal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	buildKiln(t)
	farm, err := farmtest.StartKilnd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		farm.Stop()
		if t.Failed() {
			t.Logf("kilnd log:\n%s", farm.Logs())
		}
	}()

	dir := t.TempDir()
	dockerfile := "FROM " + farmtest.BaseImage + `
COPY a.txt /a.txt
RUN echo one && echo two && cat /a.txt
RUN echo three > /b
`
	nonce := time.Now().Format(time.RFC3339Nano) // a fresh cache key for COPY and both RUNs
	for name, body := range map[string]string{"Dockerfile": dockerfile, "a.txt": nonce + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"KILN_CACHE_DIR=" + t.TempDir(), "KILN_GATEWAY=" + farm.Addr, "NO_COLOR=1", "GITLAB_CI="}
	const columns, rows = 200, 40 // wide enough that the result line with its digest does not wrap
	// steps are the build's steps as the farm names them.
	steps := []string{
		"[1/4] FROM " + farmtest.BaseImage,
		"[2/4] COPY a.txt /a.txt",
		"[3/4] RUN echo one && echo two && cat /a.txt",
		"[4/4] RUN echo three > /b",
	}
	for _, run := range []struct {
		name string
		// states are the states the summary must show, step by step.
		states []string
	}{
		{name: "first build", states: []string{"DONE|CACHED", "DONE", "DONE", "DONE"}},
		{name: "second build", states: []string{"DONE|CACHED", "CACHED", "CACHED", "CACHED"}},
	} {
		r := runInPTY(t, ctx, columns, rows, env, "build", "--builder", "buildkit", "--progress", "tty", dir)
		if r.code != 0 {
			t.Fatalf("%s: kiln build exited %d:\n%q", run.name, r.code, r.output)
		}
		if !regexp.MustCompile(`\x1b\[\d+A`).MatchString(r.output) {
			t.Errorf("%s: the view was never redrawn in place:\n%q", run.name, r.output)
		}
		s := newScreen(t, columns)
		s.write(r.output)
		screen := s.text()
		lines := strings.Split(screen, "\n")
		if !regexp.MustCompile(`^\[\+\] Building \d+\.\ds \(4/4\) FINISHED$`).MatchString(lines[0]) {
			t.Errorf("%s: the screen does not start with the finished header:\n%s", run.name, screen)
		}
		for i, step := range steps {
			re := regexp.MustCompile(`(?m)^ => ` + regexp.QuoteMeta(step) + ` +(` + run.states[i] + `) \d+\.\ds$`)
			if !re.MatchString(screen) {
				t.Errorf("%s: the screen has no line %s:\n%s", run.name, re, screen)
			}
		}
		for _, gone := range []string{"RUNNING", "QUEUED", "=> => #"} {
			if strings.Contains(screen, gone) {
				t.Errorf("%s: the summary still shows %q:\n%s", run.name, gone, screen)
			}
		}
		if !regexp.MustCompile(`(?m)^kiln: build \S+ succeeded in \d+\.\ds: sha256:[0-9a-f]{64} \(3 steps, \d cached\)$`).MatchString(screen) {
			t.Errorf("%s: the screen does not end with the result:\n%s", run.name, screen)
		}
		if !strings.Contains(screen, `kiln: running on agent "farmtest-agent"`) && !strings.Contains(screen, `"farmtest-agent"`) {
			t.Errorf("%s: the farm's lines do not name the agent:\n%s", run.name, screen)
		}
		if strings.Contains(screen, "work dir") {
			t.Errorf("%s: the agent's bookkeeping is shown without --debug:\n%s", run.name, screen)
		}
		if m := sgr.FindString(r.output); m != "" {
			t.Errorf("%s: the output holds the colour %q with NO_COLOR set", run.name, m)
		}
	}

	// The other modes of the same, now cached, build, end to end.
	t.Run("plain in GitLab CI with NO_COLOR", func(t *testing.T) {
		r := runInPTY(t, ctx, columns, rows, append(env, "GITLAB_CI=true"), "build", "--builder", "buildkit", "--progress", "plain", dir)
		if r.code != 0 {
			t.Fatalf("kiln build exited %d:\n%q", r.code, r.output)
		}
		// The terminal ends lines with CR LF; checkSections fails on any
		// escape sequence outside the section markers.
		headers := checkSections(t, strings.ReplaceAll(r.output, "\r\n", "\n"))
		if len(headers) != len(steps) {
			t.Fatalf("%d sections for %d steps: %q", len(headers), len(steps), headers)
		}
		for i, step := range steps {
			instruction := strings.SplitN(step, " ", 2)[1]
			if !regexp.MustCompile(`^#\d `+regexp.QuoteMeta(instruction)+` \((DONE \d+\.\ds|CACHED)\)$`).MatchString(headers[i]) || i > 0 && !strings.HasSuffix(headers[i], "(CACHED)") {
				t.Errorf("section %d's header %q, want step %s, cached", i, headers[i], step)
			}
		}
	})
	t.Run("plain on a terminal is coloured", func(t *testing.T) {
		r := runInPTY(t, ctx, columns, rows, []string{"KILN_CACHE_DIR=" + t.TempDir(), "KILN_GATEWAY=" + farm.Addr, "NO_COLOR=", "GITLAB_CI="}, "build", "--progress", "plain", dir)
		if r.code != 0 || !strings.Contains(r.output, styleDone+"#4 CACHED"+styleReset) {
			t.Fatalf("exit %d; want the cached steps in blue:\n%q", r.code, r.output)
		}
	})
	t.Run("--debug shows the agent's bookkeeping", func(t *testing.T) {
		for _, debug := range []bool{false, true} {
			args := []string{"build", "--builder", "buildkit", "--progress", "plain", dir}
			if debug {
				args = append([]string{"build", "--debug"}, args[1:]...)
			}
			cmd := exec.CommandContext(ctx, buildKiln(t), args...)
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("kiln %v: %v\n%s", args, err, out)
			}
			if shown := regexp.MustCompile(`(?m)^kiln: context: .*; work dir `).Match(out); shown != debug {
				t.Errorf("kiln %v shows the work-dir line: %v, want %v\n%s", args, shown, debug, out)
			}
		}
	})
	t.Run("rawjson", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, buildKiln(t), "build", "--builder", "buildkit", "--progress", "rawjson", dir)
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kiln build --progress rawjson: %v\n%s", err, stderr.String())
		}
		cached := map[string]bool{}
		for _, st := range decodeRaw(t, stdout.String()) {
			for _, v := range st.Vertexes {
				if v.Completed != nil {
					cached[v.Name] = v.Cached
				}
			}
		}
		for i, step := range steps {
			if c, ok := cached[step]; !ok || i > 0 && !c {
				t.Errorf("no completed cached vertex %q among %v\n%s", step, cached, stdout.String())
			}
		}
	})
}
