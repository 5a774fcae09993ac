package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/services/agentproto"
)

// TestLogsCarryBuildAndTraceIDs runs a build from a CI job's trace
// (TRACEPARENT) on a kilnd of its own and checks kilnd's JSON log: the
// gateway's and the agent's lines about the build carry its build_id and
// the job's trace_id.
func TestLogsCarryBuildAndTraceIDs(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	k, err := startKilnd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer k.stop()
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo logs-" + uniq() + "\n"})
	t.Setenv("TRACEPARENT", "00-"+traceID+"-00f067aa0ba902b7-01")
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "json", dir)
	if r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	_, _, id := stepsOf(t, r)
	k.stop() // the log is complete, and no longer written to

	seen := map[string]map[string]any{} // message → line, for the build's lines
	sc := bufio.NewScanner(strings.NewReader(k.logs.String()))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := map[string]any{}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			t.Fatalf("kilnd log line is not JSON: %s", sc.Text())
		}
		if line["build_id"] == id {
			seen[line["msg"].(string)] = line
		}
	}
	for _, msg := range []string{"build queued", "build running", "build context ready", "build finished"} {
		line, ok := seen[msg]
		switch {
		case !ok:
			t.Errorf("no %q line with build_id %s in kilnd's log", msg, id)
		case line["trace_id"] != traceID || line["span_id"] == nil:
			t.Errorf("%q line %v: want trace_id %s and a span_id", msg, line, traceID)
		}
	}
	if t.Failed() {
		t.Logf("kilnd log:\n%s", k.logs.String())
	}
}

// loudLines is how many lines the loud step prints ("1" to "200000").
const loudLines = 200000

// loudLogBytes is the loud step's output: 1 288 895 bytes.
var loudLogBytes = func() int64 {
	var n int64
	for i := 1; i <= loudLines; i++ {
		n += int64(len(strconv.Itoa(i)) + 1)
	}
	return n
}()

// loudDockerfile prints loudLines numbered lines in one RUN step. (A
// louder step — 20 MB at once — hangs Docker 20.10's BuildKit: a status
// batch of over 1 MiB of logs sends it into a loop of empty progress
// messages, moby/buildkit bb24010f6, fixed in v0.10.)
func loudDockerfile(base, nonce string) string {
	return fmt.Sprintf("FROM %s\nRUN seq 1 %d # %s\n", base, loudLines, nonce)
}

// loudLineRE matches one of the loud step's lines in plain progress.
var loudLineRE = regexp.MustCompile(`^(\d{1,6})$`)

// checkLoudLines checks that text holds every one of the loud step's
// lines, in order, once.
func checkLoudLines(t *testing.T, what, text string) {
	t.Helper()
	next := 1
	for l := range strings.Lines(text) {
		m := loudLineRE.FindStringSubmatch(strings.TrimRight(l, "\n"))
		if m == nil {
			continue
		}
		if n, _ := strconv.Atoi(m[1]); n != next {
			t.Fatalf("%s: line %q where line %d was due", what, strings.TrimSpace(l), next)
		}
		next++
	}
	if next != loudLines+1 {
		t.Fatalf("%s: %d of the step's %d lines", what, next-1, loudLines)
	}
}

// TestLogsKeepEveryLineOfALoudStep runs a step printing 200 000 lines on a
// farm of separate processes whose engine is started as kiln
// starts engines (BuildKit's step log limits lifted): `kiln build
// --progress plain` and the replay (`kiln logs`) print every line, in
// order, once; and the peak memory of the gateway, the scheduler and the
// agent grows by less than the log's events take in memory (measured:
// +6 MB for the gateway and the scheduler, +18 MB for the agent, against
// 30 MB), as it would not if any of them held the whole log.
func TestLogsKeepEveryLineOfALoudStep(t *testing.T) {
	e := enginetest.StartEngine(t, "loud")
	f := startFaultFarm(t, faultFarmOptions{lease: 10 * time.Second}, []*enginetest.Engine{e}, "loud-agent")
	procs := []*faultProc{f.gw, f.sched, f.agents["loud-agent"]}
	before := map[*faultProc]int64{}
	for _, p := range procs {
		resetPeakRSS(t, p.cmd.Process.Pid)
		before[p] = procStatusKiB(t, p.cmd.Process.Pid, "VmRSS")
	}
	dir := writeContext(t, map[string]string{"Dockerfile": loudDockerfile(f.base, uniq())})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "build", "--progress", "plain", dir)
	cmd.Env = append(os.Environ(), "KILN_GATEWAY="+f.gw.addrs["grpc"])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("kiln build: %v\n%s", err, tail(stderr.String(), 30))
	}
	took := time.Since(start)
	cliRSS := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	checkLoudLines(t, "kiln build --progress plain", stderr.String())
	// Held in memory, the log is at least its events: a BuildEvent, its
	// LogLine, text and Timestamp, over 150 bytes each, 30 MB in all.
	const wholeLog = loudLines * 150
	for _, p := range procs {
		peak := procStatusKiB(t, p.cmd.Process.Pid, "VmHWM")
		grew := (peak - before[p]) << 10
		t.Logf("%s: RSS %d KiB before, peak %d KiB during the build: +%.1f MB for %d lines (%.1f MB of text)",
			p.name, before[p], peak, float64(grew)/1e6, loudLines, float64(loudLogBytes)/1e6)
		if grew >= wholeLog {
			t.Errorf("%s's peak memory grew by %d bytes while %d lines went through it: it holds the log, not a window of it", p.name, grew, loudLines)
		}
	}
	t.Logf("kiln build took %v; its own peak RSS %d KiB (the SDK queues a build's events in memory)", took.Round(time.Millisecond), cliRSS)

	id := buildIDOf(t, eventLines(stderr.String()))
	r := kiln(t, f.gw.addrs["grpc"], "logs", id)
	if r.code != 0 {
		t.Fatalf("kiln logs: exit %d\n%s", r.code, tail(r.stderr, 30))
	}
	checkLoudLines(t, "kiln logs", r.stderr)
}

// resetPeakRSS resets the peak resident set size (VmHWM) of process pid.
func resetPeakRSS(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak RSS of pid %d: %v", pid, err)
	}
}

// procStatusKiB reads a "kB" field of /proc/pid/status (VmRSS, VmHWM).
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s of pid %d: %q", field, pid, v)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// TestLogsAreCutAtTheTenantsLimit: a tenant whose builds keep 100 000
// bytes of log text runs a step printing 138 894: the build succeeds, its
// log (live and replayed) holds the step's first lines in order, one
// marker line saying where and why it ends, none of the step's lines
// after it, and the next step's start.
func TestLogsAreCutAtTheTenantsLimit(t *testing.T) {
	const limit = 100000
	file := filepath.Join(t.TempDir(), "tenants.yaml")
	token := tenantsAdd(t, file, "team-logs")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	withLimit := strings.Replace(string(data), "- name: team-logs\n", fmt.Sprintf("- name: team-logs\n    log_max_bytes: %d\n", limit), 1)
	if withLimit == string(data) {
		t.Fatalf("no tenant team-logs in:\n%s", data)
	}
	if err := os.WriteFile(file, []byte(withLimit), 0o600); err != nil {
		t.Fatal(err)
	}
	k := mustStartKilnd(t, t.TempDir(), "--tenants-file", file)
	after := "after-the-cut-" + uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN seq 1 25000 # %s\nRUN echo %s\n", enginetest.BusyboxBase(t), after, after)})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--token", token, dir)
	if r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	id := buildIDOf(t, eventLines(r.stderr))
	replay := kiln(t, k.addrs.GRPC, "logs", "--token", token, id)
	if replay.code != 0 {
		t.Fatalf("kiln logs: %s", replay)
	}
	marker := agentproto.LogLimitMarker(limit)
	for what, out := range map[string]string{"kiln build": r.stderr, "kiln logs": replay.stderr} {
		lines := strings.Split(out, "\n")
		at := slices.Index(lines, marker)
		if at < 0 || strings.Count(out, marker) != 1 {
			t.Fatalf("%s: want the marker line %q once:\n%s", what, marker, tail(out, 20))
		}
		next := 1
		for i, l := range lines {
			n, err := strconv.Atoi(l)
			if err != nil {
				continue
			}
			if i > at || n != next {
				t.Fatalf("%s: line %q at %d (the marker is at %d, line %d was due)", what, l, i, at, next)
			}
			next++
		}
		if next < 10000 || next > 25000 {
			t.Fatalf("%s: the log kept lines 1 to %d of the step's 25000 under a %d-byte limit", what, next-1, limit)
		}
		if echo := "RUN echo " + after; !strings.Contains(out, echo) || strings.Contains(strings.NewReplacer(echo, "", "# "+after, "").Replace(out), after) {
			t.Fatalf("%s: want the next step's start but not its output past the cut:\n%s", what, tail(out, 20))
		}
	}
}

// TestLogsSayWhenTheEngineClips: on an engine whose BuildKit keeps 4 KiB
// of a step's output (an operator's engine, not one kiln started), a step
// printing 24 KB is clipped; the build's log names the engine setting
// that lifts the limit, and `kiln agents` lists the warning.
func TestLogsSayWhenTheEngineClips(t *testing.T) {
	e := enginetest.StartEngineWithEnv(t, "clips", engine.StepLogMaxSizeEnv+"=4096")
	f := startFaultFarm(t, faultFarmOptions{}, []*enginetest.Engine{e}, "clip-agent")
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN seq 1 5000 # %s\n", f.base, uniq())})
	r := kiln(t, f.gw.addrs["grpc"], "build", "--progress", "plain", dir)
	if r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	for _, want := range []string{"[output clipped, log limit 4KiB reached]", `[kiln] the engine of agent "clip-agent" clipped this step's output`, "BUILDKIT_STEP_LOG_MAX_SIZE=1073741824"} {
		mustContain(t, r.stderr, want, "kiln build's output")
	}
	waitFor(t, time.Minute, "kiln agents to list the clip warning", func() bool {
		r := kiln(t, f.gw.addrs["grpc"], "agents", "--format", "{{.Name}}: {{.Warnings}}")
		return r.code == 0 && strings.Contains(r.stdout, "clip-agent: the engine clipped the output of build") &&
			strings.Contains(r.stdout, "restart its dockerd with BUILDKIT_STEP_LOG_MAX_SIZE=1073741824")
	})
}
