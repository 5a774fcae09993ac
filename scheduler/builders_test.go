package scheduler

import (
	"maps"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestBuilderLabels(t *testing.T) {
	bk, classic := kilnv1.Builder_BUILDER_BUILDKIT, kilnv1.Builder_BUILDER_CLASSIC
	agent := routingAgentLabels(&kilnv1.Agent{Labels: map[string]string{"arch": "amd64"}, Builders: []kilnv1.Builder{bk, classic}})
	if want := map[string]string{"arch": "amd64", "kiln.builder.buildkit": "true", "kiln.builder.classic": "true"}; !maps.Equal(agent, want) {
		t.Fatalf("agent labels %v, want %v", agent, want)
	}
	for _, tt := range []struct {
		spec *kilnv1.BuildSpec
		want map[string]string
	}{
		{&kilnv1.BuildSpec{}, nil},
		{&kilnv1.BuildSpec{AgentLabels: map[string]string{"arch": "amd64"}}, map[string]string{"arch": "amd64"}},
		{&kilnv1.BuildSpec{Builder: classic}, map[string]string{"kiln.builder.classic": "true"}},
		{&kilnv1.BuildSpec{Secrets: []*kilnv1.SealedSecret{{Id: "a"}}}, map[string]string{"kiln.builder.buildkit": "true"}},
		{&kilnv1.BuildSpec{Builder: bk, AgentLabels: map[string]string{"x": "y"}}, map[string]string{"x": "y", "kiln.builder.buildkit": "true"}},
	} {
		if got := routingBuildLabels(tt.spec); !maps.Equal(got, tt.want) {
			t.Errorf("build %v: labels %v, want %v", tt.spec, got, tt.want)
		}
	}
}
