package progress

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// rawStatus is a SolveStatus as a reader of `buildctl --progress rawjson`
// decodes it (github.com/moby/buildkit/client's JSON field names).
type rawStatus struct {
	Vertexes []struct {
		Digest    string     `json:"digest"`
		Name      string     `json:"name"`
		Started   *time.Time `json:"started"`
		Completed *time.Time `json:"completed"`
		Cached    bool       `json:"cached"`
		Error     string     `json:"error"`
	} `json:"vertexes"`
	Logs []struct {
		Vertex    string    `json:"vertex"`
		Stream    int       `json:"stream"`
		Data      []byte    `json:"data"`
		Timestamp time.Time `json:"timestamp"`
	} `json:"logs"`
}

// decodeRaw parses rawjson output, one SolveStatus a line, and checks
// each line holds only the fields SolveStatus has.
func decodeRaw(t *testing.T, out string) []rawStatus {
	t.Helper()
	var all []rawStatus
	for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		var st rawStatus
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		if len(st.Vertexes) == 0 && len(st.Logs) == 0 {
			t.Errorf("line %d is an empty status: %q", i+1, line)
		}
		all = append(all, st)
	}
	return all
}

func TestRawJSON(t *testing.T) {
	stdout, stderr := render(RawJSON, succeeded())
	if stderr != "" {
		t.Errorf("rawjson wrote to stderr: %q", stderr)
	}
	type vertexState struct {
		name              string
		started, complete bool
		cached            bool
		errText           string
	}
	vertices := map[string]*vertexState{}
	var order []string
	logs := map[string]string{}
	for _, st := range decodeRaw(t, stdout) {
		for _, v := range st.Vertexes {
			if !strings.HasPrefix(v.Digest, "sha256:") || len(v.Digest) != 71 {
				t.Errorf("vertex digest %q is not a sha256 digest", v.Digest)
			}
			vs := vertices[v.Digest]
			if vs == nil {
				vs = &vertexState{}
				vertices[v.Digest] = vs
				order = append(order, v.Digest)
			}
			if vs.name != "" && vs.name != v.Name {
				t.Errorf("vertex %s renamed from %q to %q", v.Digest, vs.name, v.Name)
			}
			vs.name = v.Name
			vs.started = vs.started || v.Started != nil
			vs.complete = vs.complete || v.Completed != nil
			vs.cached, vs.errText = v.Cached, v.Error
			if v.Started != nil && v.Completed != nil && v.Completed.Before(*v.Started) {
				t.Errorf("vertex %q completed before it started", v.Name)
			}
		}
		for _, l := range st.Logs {
			if vertices[l.Vertex] == nil {
				t.Errorf("log %q of a vertex never announced", l.Data)
			}
			if l.Stream != 1 || l.Timestamp.IsZero() {
				t.Errorf("log %q: stream %d, timestamp %v", l.Data, l.Stream, l.Timestamp)
			}
			logs[l.Vertex] += string(l.Data)
		}
	}
	want := []struct {
		name   string
		cached bool
		logs   string
	}{
		{name: "[kiln] farm"},
		{name: "[1/2] COPY . /src", cached: true},
		{name: "[2/2] RUN echo hi", logs: "hi\n"},
		{name: "[kiln] pushing 127.0.0.1:5000/x:1"},
	}
	if len(order) != len(want) {
		t.Fatalf("%d vertices, want %d: %v", len(order), len(want), order)
	}
	for i, w := range want {
		v := vertices[order[i]]
		if v.name != w.name || v.cached != w.cached || !v.started || !v.complete || v.errText != "" {
			t.Errorf("vertex %d = %+v, want %q started, completed, cached %v", i, *v, w.name, w.cached)
		}
		if w.logs != "" && logs[order[i]] != w.logs {
			t.Errorf("vertex %q logs %q, want %q", w.name, logs[order[i]], w.logs)
		}
	}
	farm := logs[order[0]]
	for _, s := range []string{"queued (attempt 1)", `assigned on agent "kilnd"`, "pushed 127.0.0.1:5000/x:1 sha256:m1", "build b01 succeeded"} {
		if !strings.Contains(farm, s) {
			t.Errorf("the farm vertex's logs lack %q:\n%s", s, farm)
		}
	}
}

func TestRawJSONFailure(t *testing.T) {
	stdout, stderr := render(RawJSON, failed())
	if want := "ERROR: process \"/bin/sh -c echo bad && false\" did not complete successfully: exit code: 1\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
	errs := map[string]string{}
	for _, st := range decodeRaw(t, stdout) {
		for _, v := range st.Vertexes {
			errs[v.Name] = v.Error
		}
	}
	if errs["[1/3] RUN echo ok"] != "" || !strings.Contains(errs["[2/3] RUN echo bad && false"], "exit code: 1") {
		t.Errorf("vertex errors %q: want the failing step's only", errs)
	}
}

func TestRawJSONRequeueStartsNewVertices(t *testing.T) {
	stdout, _ := render(RawJSON, append(events(1,
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
	), events(2,
		&kilnv1.StepStarted{Step: 1, Total: 1, Instruction: "RUN make"},
		&kilnv1.StepFinished{Step: 1, Cached: true},
	)...))
	digests := map[string]bool{}
	for _, st := range decodeRaw(t, stdout) {
		for _, v := range st.Vertexes {
			digests[v.Digest] = true
		}
	}
	if len(digests) != 2 {
		t.Errorf("%d vertices for one step in two attempts, want 2", len(digests))
	}
}
