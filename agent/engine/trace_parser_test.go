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
		case eventClipped:
			out = append(out, fmt.Sprintf("clipped %d %s", e.step, e.line))
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
		// BuildKit appends its notice to the part of a write it kept
		// (util/progress/logs/logs.go), on a line of its own.
		name: "BuildKit's clip notices are logged and reported",
		msgs: []*controlapi.StatusResponse{
			{Vertexes: []*controlapi.Vertex{vtx("s", "[stage-0 2/2] RUN seq 1 200000", 0, -1, false, "")}},
			{Logs: []*controlapi.VertexLog{{Vertex: "s", Msg: []byte("1\n2\n3")}}},
			{Logs: []*controlapi.VertexLog{{Vertex: "s", Msg: []byte("\n[output clipped, log limit 200KiB/s reached]\n")}}},
			{Logs: []*controlapi.VertexLog{{Vertex: "s", Msg: []byte("99\n[output clipped, log limit 2MiB reached]\n")}}},
			{Logs: []*controlapi.VertexLog{{Vertex: "s", Msg: []byte("[output clipped, log limit 2MiB reached] not quite\n")}}},
		},
		want: []string{
			"start 1/2 RUN seq 1 200000",
			"log 1 1", "log 1 2", "log 1 3",
			"log 1 [output clipped, log limit 200KiB/s reached]", "clipped 1 200KiB/s",
			"log 1 99",
			"log 1 [output clipped, log limit 2MiB reached]", "clipped 1 2MiB",
			"log 1 [output clipped, log limit 2MiB reached] not quite",
		},
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

// TestParseStepName takes vertex names as BuildKit's Dockerfile frontend
// writes them (dockerfile2llb's prefixCommand pads the position to the width
// of the stage's total).
func TestParseStepName(t *testing.T) {
	tests := []struct {
		name        string
		stage       string
		total       int
		instruction string
		ok          bool
	}{
		{name: "[1/2] FROM busybox", total: 2, instruction: "FROM busybox", ok: true},
		{name: "[ 1/15] FROM 127.0.0.1:5000/kiln/busybox:1", total: 15, instruction: "FROM 127.0.0.1:5000/kiln/busybox:1", ok: true},
		{name: "[ 9/15] RUN echo 9", total: 15, instruction: "RUN echo 9", ok: true},
		{name: "[12/15] RUN echo 12", total: 15, instruction: "RUN echo 12", ok: true},
		{name: "[  7/120] COPY a /a", total: 120, instruction: "COPY a /a", ok: true},
		{name: "[builder 3/4] RUN go build ./...", stage: "builder", total: 4, instruction: "RUN go build ./...", ok: true},
		{name: "[stage-0 2/3] RUN echo hi", stage: "stage-0", total: 3, instruction: "RUN echo hi", ok: true},
		{name: "[stage-1  1/14] FROM busybox", stage: "stage-1", total: 14, instruction: "FROM busybox", ok: true},
		{name: "[stage-1 14/14] COPY --from=0 /a /b", stage: "stage-1", total: 14, instruction: "COPY --from=0 /a /b", ok: true},
		{name: "[linux/arm64 builder 3/4] RUN make", stage: "linux/arm64 builder", total: 4, instruction: "RUN make", ok: true},
		{name: "[linux/amd64->arm64  2/10] RUN make", stage: "linux/amd64->arm64", total: 10, instruction: "RUN make", ok: true},
		{name: "[base 2/2] ONBUILD RUN echo on", stage: "base", total: 2, instruction: "ONBUILD RUN echo on", ok: true},
		{name: "[internal] load build definition from Dockerfile"},
		{name: "[internal] load metadata for 127.0.0.1:5000/kiln/busybox:1"},
		{name: "[internal] load build context"},
		{name: "[auth] kiln/busybox:pull token for 127.0.0.1:5000"},
		{name: "exporting to image"},
		{name: "[stage-0 2/3]RUN no space"},
		{name: "[a b c 1/2] RUN three words"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage, total, instruction, ok := parseStepName(tt.name)
			if ok != tt.ok || stage != tt.stage || total != tt.total || instruction != tt.instruction {
				t.Fatalf("parseStepName(%q) = %q, %d, %q, %v; want %q, %d, %q, %v",
					tt.name, stage, total, instruction, ok, tt.stage, tt.total, tt.instruction, tt.ok)
			}
		})
	}
}

// TestTraceParserPaddedStage follows a stage of twelve instructions, whose
// positions BuildKit pads ("[ 1/12]"): every one is a counted, numbered step.
func TestTraceParserPaddedStage(t *testing.T) {
	p := newTraceParser()
	var msgs []*controlapi.StatusResponse
	for i := 1; i <= 12; i++ {
		name := fmt.Sprintf("[stage-1 %2d/12] RUN echo %d", i, i)
		if i == 1 {
			name = "[stage-1  1/12] FROM busybox"
		}
		d := fmt.Sprint("d", i)
		msgs = append(msgs,
			&controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{vtx(d, name, float64(i), -1, false, "")}},
			&controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{vtx(d, name, float64(i), float64(i)+0.5, i <= 4, "")}})
	}
	var got []string
	for _, m := range msgs {
		got = append(got, renderTrace(p.feed(m))...)
	}
	if len(got) != 24 {
		t.Fatalf("%d events, want 24:\n%s", len(got), strings.Join(got, "\n"))
	}
	if got[0] != "start 1/12 FROM busybox" || got[22] != "start 12/12 RUN echo 12" || got[23] != "finish 12 cached=false 500ms RUN echo 12" {
		t.Fatalf("events:\n%s", strings.Join(got, "\n"))
	}
	if p.steps != 11 || p.cachedSteps != 3 {
		t.Fatalf("steps %d cached %d, want 11 3", p.steps, p.cachedSteps)
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

func TestClipSetting(t *testing.T) {
	for limit, want := range map[string]string{
		"200KiB/s": "BUILDKIT_STEP_LOG_MAX_SPEED",
		"2MiB":     "BUILDKIT_STEP_LOG_MAX_SIZE",
		"-1B":      "BUILDKIT_STEP_LOG_MAX_SIZE",
	} {
		if got := ClipSetting(limit); got != want {
			t.Errorf("ClipSetting(%q) = %s, want %s", limit, got, want)
		}
	}
}
