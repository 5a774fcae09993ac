package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// This file is the harness of the CLI tests (cli_*_test.go): a kiln
// process the test reads line by line while it runs and can interrupt,
// and readers of what the CLI printed.

// kilnProc is a running kiln command.
type kilnProc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	mu     sync.Mutex
	lines  []string // stderr, line by line as it comes
	exited chan struct{}
	code   int
	err    error // a failure to run or wait, not a non-zero exit
}

// startKiln starts the CLI with args against gateway (KILN_GATEWAY) and a
// file-digest cache of its own; it is killed when the test ends if it is
// still running.
func startKiln(t *testing.T, ctx context.Context, gateway string, args ...string) *kilnProc {
	t.Helper()
	p := &kilnProc{cmd: exec.CommandContext(ctx, kilnBin, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "KILN_GATEWAY="+gateway, "KILN_CACHE_DIR="+t.TempDir())
	p.cmd.Stdout = &p.stdout
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
	}()
	go func() {
		<-readDone // Wait closes the pipe: read it all first
		err := p.cmd.Wait()
		var exitErr *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exitErr):
			p.code = exitErr.ExitCode()
		default:
			p.err = err
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// stderrLines returns what the command wrote to stderr so far.
func (p *kilnProc) stderrLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// printed reports whether the command wrote a stderr line matching re.
func (p *kilnProc) printed(re *regexp.Regexp) bool {
	for _, l := range p.stderrLines() {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

// waitPrinted waits until the command printed a line matching re, failing
// the test if it exits first or within passes.
func (p *kilnProc) waitPrinted(t *testing.T, ctx context.Context, within time.Duration, re *regexp.Regexp) {
	t.Helper()
	exitedFirst := false
	if _, err := waitUntil(ctx, within, "kiln to print "+re.String(), func() bool {
		if p.printed(re) {
			return true
		}
		select {
		case <-p.exited:
			exitedFirst = true
			return true
		default:
			return false
		}
	}); err != nil || exitedFirst {
		t.Fatalf("kiln %v: %v (exited first: %t); it printed:\n%s", p.cmd.Args[1:], err, exitedFirst, strings.Join(p.stderrLines(), "\n"))
	}
}

// wait waits for the command to exit and returns what it did.
func (p *kilnProc) wait(t *testing.T, ctx context.Context) result {
	t.Helper()
	select {
	case <-p.exited:
	case <-ctx.Done():
		t.Fatalf("kiln %v did not exit: %v; it printed:\n%s", p.cmd.Args[1:], ctx.Err(), strings.Join(p.stderrLines(), "\n"))
	}
	if p.err != nil {
		t.Fatalf("kiln %v: %v", p.cmd.Args[1:], p.err)
	}
	return result{code: p.code, stdout: p.stdout.String(), stderr: strings.Join(p.stderrLines(), "\n")}
}

// interrupt sends SIGINT, as Ctrl-C does.
func (p *kilnProc) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT to kiln: %v", err)
	}
}

// queuedID is the id of the build a `kiln build` or `kiln logs` printed
// as queued.
var queuedID = regexp.MustCompile(`^kiln: build (\S+) queued`)

// buildIDOf returns the build id in the "kiln: build ID queued" line of
// lines, failing the test if there is none.
func buildIDOf(t *testing.T, lines []string) string {
	t.Helper()
	for _, l := range lines {
		if m := queuedID.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no \"kiln: build ID queued\" line in:\n%s", strings.Join(lines, "\n"))
	return ""
}

// eventLines drops from a `kiln build --progress plain` output the lines
// the CLI printed about sending the context before the build existed,
// leaving the lines it printed from the build's events.
func eventLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(stderr, "\n"), "\n") {
		if strings.HasPrefix(l, "context: ") {
			continue
		}
		out = append(out, l)
	}
	return out
}

// inspectBuild runs `kiln inspect id` and decodes the one record.
func inspectBuild(t *testing.T, gateway, id string) map[string]any {
	t.Helper()
	r := kiln(t, gateway, "inspect", id)
	if r.code != 0 {
		t.Fatalf("kiln inspect %s: %s", id, r)
	}
	var records []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &records); err != nil {
		t.Fatalf("kiln inspect %s printed no JSON array: %v\n%s", id, err, r.stdout)
	}
	if len(records) != 1 {
		t.Fatalf("kiln inspect %s printed %d records, want 1:\n%s", id, len(records), r.stdout)
	}
	return records[0]
}

// waitState waits until `kiln inspect` shows build id in state (a
// BuildState name such as "BUILD_STATE_CANCELLED").
func waitState(t *testing.T, ctx context.Context, gateway, id, state string) map[string]any {
	t.Helper()
	var rec map[string]any
	if _, err := waitUntil(ctx, 2*time.Minute, "build "+id+" to be "+state, func() bool {
		rec = inspectBuild(t, gateway, id)
		return rec["state"] == state
	}); err != nil {
		t.Fatalf("%v; its record: %v", err, rec)
	}
	return rec
}

// slowBuild writes a context whose RUN prints marker-1 … marker-n, paced
// so the build runs for a while (the pace is the workload's; nothing in a
// test waits on it).
func slowBuild(t *testing.T, base, marker string, n int) string {
	return writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN for i in $(seq 1 " + strconv.Itoa(n) + "); do echo " + marker + "-$i; sleep 0.2; done\n"})
}
