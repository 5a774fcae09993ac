package tests

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
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
