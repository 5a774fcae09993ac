package gateway

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// TestStartBuildAttest: annotations, attestations and --call the rules
// refuse are InvalidArgument with the rule's message; valid ones on a
// farm whose live agents are Docker engines are FailedPrecondition naming
// the flags and what to run, and nothing is recorded; once a standalone
// BuildKit agent advertises the features the build is queued.
func TestStartBuildAttest(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := as(t.Context(), tokenA)
	start := func(spec *kilnv1.BuildSpec) error {
		spec.Dockerfile = "Dockerfile"
		_, err := c.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: spec, Context: f.ref})
		return err
	}
	for _, tc := range []struct {
		spec *kilnv1.BuildSpec
		want string
	}{
		{spec: &kilnv1.BuildSpec{Annotations: []string{"layer:a=b"}}, want: `unknown type "layer"`},
		{spec: &kilnv1.BuildSpec{Annotations: []string{"index:a=b"}}, want: "index annotations need several --platform values"},
		{spec: &kilnv1.BuildSpec{Provenance: "mode=all"}, want: "mode=all: want min or max"},
		{spec: &kilnv1.BuildSpec{Provenance: "true"}, want: "add --push"},
		{spec: &kilnv1.BuildSpec{Call: "print"}, want: "want build, check, outline or targets"},
		{spec: &kilnv1.BuildSpec{Call: "check", Push: true, Tags: []string{"registry.example.com/team-a/app:1"}}, want: "builds nothing"},
	} {
		err := start(tc.spec)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Fatalf("StartBuild %v: %v, want InvalidArgument with %q", tc.spec, err, tc.want)
		}
	}
	before, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := f.conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func(name, kind string, features ...string) {
		data, err := proto.Marshal(&kilnv1.Agent{Name: name, State: kilnv1.AgentState_AGENT_STATE_READY, EngineKind: kind, Features: features})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(t.Context(), name, data); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat("docker-1", "docker", "cache-import", "cache-export-inline")
	pushed := func(s *kilnv1.BuildSpec) *kilnv1.BuildSpec {
		s.Push, s.Tags = true, []string{"registry.example.com/team-a/app:1"}
		return s
	}
	for _, tc := range []struct {
		spec *kilnv1.BuildSpec
		want string
	}{
		{spec: &kilnv1.BuildSpec{Annotations: []string{"org.opencontainers.image.title=app"}}, want: "--annotation need an agent"},
		{spec: pushed(&kilnv1.BuildSpec{Provenance: "mode=max"}), want: "--provenance and --sbom need an agent"},
		{spec: &kilnv1.BuildSpec{Call: "check"}, want: "--call and --check need an agent"},
	} {
		err := start(tc.spec)
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(msg, tc.want) || !strings.Contains(msg, "kiln-agent --engine buildkit://") {
			t.Fatalf("StartBuild %v on a Docker farm: %v, want FailedPrecondition with %q and what to run", tc.spec, err, tc.want)
		}
	}
	after, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("refused builds were recorded: %d records, then %d", len(before), len(after))
	}
	// --provenance=false asks for nothing: no agent needed.
	if err := start(&kilnv1.BuildSpec{Provenance: "false", Sbom: "false"}); err != nil {
		t.Fatalf("--provenance=false --sbom=false on Docker agents: %v", err)
	}
	heartbeat("buildkit-1", "buildkit", "annotations", "attestations", "frontend-requests")
	if err := start(pushed(&kilnv1.BuildSpec{Provenance: "mode=max", Annotations: []string{"a=b"}})); err != nil {
		t.Fatalf("provenance and annotations with a BuildKit agent: %v", err)
	}
}
