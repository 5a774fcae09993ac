package engine

import (
	"strings"
	"testing"

	controlapi "github.com/moby/buildkit/api/services/control"
)

// TestTraceParserFROMNamedByAnotherBuild: BuildKit runs the FROM vertex
// two concurrent builds share once and reports it to both under the name
// the first build gave it ("[foreign 1/2] FROM …", moby/buildkit#2820),
// before this build's other vertices are named. Once they are, the total
// is this build's own (13 + 10), not the other build's stage added to it.
// As seen in CI: TestBuildKitCountsEveryStepOfALongStage numbered its
// steps "n/25" while another test built FROM the same image.
func TestTraceParserFROMNamedByAnotherBuild(t *testing.T) {
	p := newTraceParser()
	run := func(d, name, input string, at float64) *controlapi.Vertex {
		v := vtx(d, name, at, -1, false, "")
		v.Inputs = []string{input}
		return v
	}
	msgs := []*controlapi.StatusResponse{
		{Vertexes: []*controlapi.Vertex{vtx("base", "[foreign 1/2] FROM busybox", 0, 0.1, false, "")}},
		{Vertexes: []*controlapi.Vertex{
			run("b2", "[builder  2/13] RUN echo b", "base", -1),
			run("s2", "[stage-1  2/10] RUN echo s", "base", -1),
		}},
		{Vertexes: []*controlapi.Vertex{run("b2", "[builder  2/13] RUN echo b", "base", 1)}},
		{Vertexes: []*controlapi.Vertex{run("s2", "[stage-1  2/10] RUN echo s", "base", 1)}},
	}
	var got []string
	for _, m := range msgs {
		for _, l := range renderTrace(p.feed(m)) {
			if strings.HasPrefix(l, "start ") {
				got = append(got, l)
			}
		}
	}
	// The FROM's total is what was known when it started: nothing better.
	want := []string{"start 1/2 FROM busybox", "start 2/23 RUN echo b", "start 3/23 RUN echo s"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestTraceParserFROMOnlyStage: a stage whose only vertex is its FROM
// (FROM nginx, EXPOSE 80) counts by its FROM's name, alongside a stage
// whose other instructions name it.
func TestTraceParserFROMOnlyStage(t *testing.T) {
	p := newTraceParser()
	build := vtx("r", "[build 2/3] RUN make", -1, -1, false, "")
	build.Inputs = []string{"a"}
	p.feed(&controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{
		vtx("a", "[build 1/3] FROM golang", -1, -1, false, ""),
		build,
		vtx("n", "[stage-1 1/2] FROM nginx", -1, -1, false, ""),
	}})
	if got := p.total(); got != 5 {
		t.Fatalf("total %d, want 5 (3 + 2)", got)
	}
}
