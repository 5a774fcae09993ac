package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"

	controlapi "github.com/moby/buildkit/api/services/control"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

func ts(sec float64) *timestamppb.Timestamp {
	return timestamppb.New(t0.Add(time.Duration(sec * float64(time.Second))))
}

func vtx(digest, name string, started, completed float64, cached bool, errMsg string) *controlapi.Vertex {
	v := &controlapi.Vertex{Digest: digest, Name: name, Cached: cached, Error: errMsg}
	if started >= 0 {
		v.Started = ts(started)
	}
	if completed >= 0 {
		v.Completed = ts(completed)
	}
	return v
}

// renderTrace turns events into comparable lines.
func renderTrace(evs []event) []string {
	var out []string
	for _, e := range evs {
		switch e.kind {
		case eventLog:
			out = append(out, fmt.Sprintf("log %d %s", e.step, e.line))
		case eventStepStarted:
			out = append(out, fmt.Sprintf("start %d/%d %s", e.step, e.total, e.instruction))
		case eventStepFinished:
			out = append(out, fmt.Sprintf("finish %d cached=%v %v %s", e.step, e.cached, e.took, e.instruction))
		}
	}
	return out
}

func TestTraceParser(t *testing.T) {
	tests := []struct {
		name        string
		msgs        []*controlapi.StatusResponse
		want        []string
		steps       int
		cachedSteps int
		failure     string
	}{{
		name: "steps are numbered as they start, internal vertices are logged",
		msgs: []*controlapi.StatusResponse{
			{Vertexes: []*controlapi.Vertex{vtx("d0", "[internal] load build definition from Dockerfile", 0, -1, false, "")}},
			{Vertexes: []*controlapi.Vertex{
				vtx("d0", "[internal] load build definition from Dockerfile", 0, 0.1, false, ""),
				vtx("d1", "[stage-0 1/3] FROM busybox", 0.2, 0.3, true, ""),
			}},
			{Vertexes: []*controlapi.Vertex{vtx("d2", "[stage-0 2/3] RUN echo hi", 0.3, -1, false, "")}},
			{Logs: []*controlapi.VertexLog{{Vertex: "d2", Msg: []byte("h")}, {Vertex: "d2", Msg: []byte("i\nthere\r\npart")}}},
			{Vertexes: []*controlapi.Vertex{
				vtx("d2", "[stage-0 2/3] RUN echo hi", 0.3, 1.3, false, ""),
				vtx("d3", "[stage-0 3/3] COPY a /a", 1.3, 1.3, true, ""),
			}},
		},
		want: []string{
			"log 0 [internal] load build definition from Dockerfile",
			"start 1/3 FROM busybox", "finish 1 cached=true 100ms FROM busybox",
			"start 2/3 RUN echo hi",
			"log 2 hi", "log 2 there",
			"finish 2 cached=false 1s RUN echo hi",
			"start 3/3 COPY a /a", "finish 3 cached=true 0s COPY a /a",
			"log 2 part",
		},
		steps: 2, cachedSteps: 1,
	}, {
		name: "parallel stages interleave and add up to the total",
		msgs: []*controlapi.StatusResponse{
			{Vertexes: []*controlapi.Vertex{
				vtx("a", "[a 2/2] RUN sleep 2", 0, -1, false, ""),
				vtx("b", "[b 2/2] RUN sleep 2", 0, -1, false, ""),
			}},
			{Vertexes: []*controlapi.Vertex{vtx("b", "[b 2/2] RUN sleep 2", 0, 2, false, "")}},
			{Vertexes: []*controlapi.Vertex{vtx("a", "[a 2/2] RUN sleep 2", 0, 2.5, false, "")}},
		},
		want: []string{
			"start 1/2 RUN sleep 2", "start 2/4 RUN sleep 2",
			"finish 2 cached=false 2s RUN sleep 2", "finish 1 cached=false 2.5s RUN sleep 2",
		},
		steps: 2,
	}, {
		name: "a failing step is the failure; later cancellations are not",
		msgs: []*controlapi.StatusResponse{
			{Vertexes: []*controlapi.Vertex{vtx("x", "[stage-0 2/2] RUN exit 3", 0, -1, false, "")}},
			{Vertexes: []*controlapi.Vertex{
				vtx("x", "[stage-0 2/2] RUN exit 3", 0, 1, false, `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`),
				vtx("y", "[other 2/2] RUN sleep 9", 0, 1, false, "context canceled"),
			}},
		},
		want:    []string{"start 1/2 RUN exit 3", "start 2/4 RUN sleep 9"},
		failure: `build failed at step 1 (RUN exit 3): process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`,
	}, {
		name: "an internal vertex failing has no step",
		msgs: []*controlapi.StatusResponse{
			{Vertexes: []*controlapi.Vertex{vtx("m", "[internal] load metadata for nope:1", 0, 1, false, "nope:1: not found")}},
		},
		want:    []string{"log 0 [internal] load metadata for nope:1"},
		failure: "build failed: [internal] load metadata for nope:1: nope:1: not found",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTraceParser()
			var got []string
			for _, m := range tt.msgs {
				// Round-trip through the wire form the engine sends.
				data, err := proto.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				var back controlapi.StatusResponse
				if err := proto.Unmarshal(data, &back); err != nil {
					t.Fatal(err)
				}
				got = append(got, renderTrace(p.feed(&back))...)
			}
			got = append(got, renderTrace(p.finish())...)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if p.steps != tt.steps || p.cachedSteps != tt.cachedSteps {
				t.Fatalf("steps %d cached %d, want %d %d", p.steps, p.cachedSteps, tt.steps, tt.cachedSteps)
			}
			gotFailure := ""
			if p.failure != nil {
				gotFailure = p.failure.Error()
			}
			if gotFailure != tt.failure {
				t.Fatalf("failure %q, want %q", gotFailure, tt.failure)
			}
		})
	}
}

// FuzzTraceParser feeds arbitrary progress: the parser must not panic,
// must number steps from 1 without gaps, and finish each at most once.
func FuzzTraceParser(f *testing.F) {
	seed, _ := proto.Marshal(&controlapi.StatusResponse{
		Vertexes: []*controlapi.Vertex{vtx("d", "[s 1/2] RUN x", 0, 1, true, "")},
		Logs:     []*controlapi.VertexLog{{Vertex: "d", Msg: []byte("a\nb")}},
	})
	f.Add(seed, seed)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		p := newTraceParser()
		started, finished := map[int]bool{}, map[int]bool{}
		for _, data := range [][]byte{a, b, a} {
			var st controlapi.StatusResponse
			if proto.Unmarshal(data, &st) != nil {
				continue
			}
			for _, e := range p.feed(&st) {
				switch e.kind {
				case eventStepStarted:
					if started[e.step] || e.step != len(started)+1 {
						t.Fatalf("step %d started out of order (started %v)", e.step, started)
					}
					started[e.step] = true
				case eventStepFinished:
					if finished[e.step] || !started[e.step] {
						t.Fatalf("step %d finished twice or before it started", e.step)
					}
					finished[e.step] = true
				}
			}
		}
		p.finish()
	})
}
