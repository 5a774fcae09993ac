package engine

import (
	"slices"
	"strings"
	"testing"

	controlapi "github.com/moby/buildkit/api/services/control"
)

func TestTraceParserCacheImportFailureIsNoBuildFailure(t *testing.T) {
	const (
		ref    = "127.0.0.1:5000/team/cache:main"
		reason = "failed to configure registry cache importer: 127.0.0.1:5000/team/cache:main: not found"
	)
	p := newTraceParser()
	var got []string
	for _, m := range []*controlapi.StatusResponse{
		{Vertexes: []*controlapi.Vertex{vtx("c", "importing cache manifest from "+ref, 0, -1, false, "")}},
		{Vertexes: []*controlapi.Vertex{vtx("c", "importing cache manifest from "+ref, 0, 0.1, false, reason)}},
		{Vertexes: []*controlapi.Vertex{vtx("c", "importing cache manifest from "+ref, 0, 0.1, false, reason)}},
		{Vertexes: []*controlapi.Vertex{vtx("r", "[stage-0 2/2] RUN true", 0.2, 0.3, false, "")}},
	} {
		got = append(got, renderTrace(p.feed(m))...)
	}
	want := []string{
		"log 0 importing cache manifest from " + ref,
		"log 0 [kiln] cache not imported from " + ref + ": " + reason,
		"start 1/2 RUN true", "finish 1 cached=false 100ms RUN true",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p.failure != nil || p.steps != 1 {
		t.Fatalf("failure %v, %d steps; want none, 1", p.failure, p.steps)
	}
	gotRef, gotReason, ok := ParseCacheImportFailure(strings.TrimPrefix(got[1], "log 0 "))
	if !ok || gotRef != ref || gotReason != reason {
		t.Fatalf("ParseCacheImportFailure = %q, %q, %v", gotRef, gotReason, ok)
	}
	if _, _, ok := ParseCacheImportFailure("importing cache manifest from " + ref); ok {
		t.Fatal("ParseCacheImportFailure read a line that is not a failure")
	}
}
