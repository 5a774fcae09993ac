package scheduler

import (
	"maps"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
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
		{&kilnv1.BuildSpec{CacheTo: []*kilnv1.CacheOption{{Type: "inline"}}}, nil},
		{&kilnv1.BuildSpec{CacheFrom: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "r:5000/a:c"}}}}, nil},
		{&kilnv1.BuildSpec{CacheTo: []*kilnv1.CacheOption{{Type: "inline"}, {Type: "registry", Attrs: map[string]string{"ref": "r:5000/a:c"}}}},
			map[string]string{"kiln.feature.cache-export-registry": "true"}},
		{&kilnv1.BuildSpec{Builder: bk, AgentLabels: map[string]string{"x": "y"}, CacheTo: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "r:5000/a:c"}}}},
			map[string]string{"x": "y", "kiln.builder.buildkit": "true", "kiln.feature.cache-export-registry": "true"}},
	} {
		if got := routingBuildLabels(tt.spec); !maps.Equal(got, tt.want) {
			t.Errorf("build %v: labels %v, want %v", tt.spec, got, tt.want)
		}
	}
}

func TestFeatureLabels(t *testing.T) {
	for _, tt := range []struct {
		agent *kilnv1.Agent
		want  map[string]string
	}{
		{&kilnv1.Agent{Labels: map[string]string{"arch": "amd64"}}, map[string]string{"arch": "amd64"}},
		{&kilnv1.Agent{Features: []string{"cache-import", "cache-export-inline"}},
			map[string]string{"kiln.feature.cache-import": "true", "kiln.feature.cache-export-inline": "true"}},
		{&kilnv1.Agent{Labels: map[string]string{"arch": "amd64"}, Builders: []kilnv1.Builder{kilnv1.Builder_BUILDER_BUILDKIT}, EngineKind: "buildkit",
			Features: []string{"cache-import", "cache-export-registry", "rootless"}},
			map[string]string{"arch": "amd64", "kiln.builder.buildkit": "true", "kiln.feature.cache-import": "true",
				"kiln.feature.cache-export-registry": "true", "kiln.feature.rootless": "true"}},
	} {
		if got := routingAgentLabels(tt.agent); !maps.Equal(got, tt.want) {
			t.Errorf("agent %v: labels %v, want %v", tt.agent, got, tt.want)
		}
	}
	// The router sends a registry export to the agent with the feature
	// only, and leaves it queued while none has it.
	docker := routing.Agent{Name: "docker", FreeSlots: 1, Slots: 1,
		Labels: routingAgentLabels(&kilnv1.Agent{Features: []string{"cache-import", "cache-export-inline"}})}
	bk := routing.Agent{Name: "bk", FreeSlots: 1, Slots: 1,
		Labels: routingAgentLabels(&kilnv1.Agent{Features: []string{"cache-import", "cache-export-registry"}})}
	b := routing.Build{ID: "b1", Tenant: "t", Lineage: "L", QueuedAt: time.Unix(0, 0),
		Labels: routingBuildLabels(&kilnv1.BuildSpec{CacheTo: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "r:5000/a:c"}}}})}
	if got := routing.Route(routing.Config{}, []routing.Build{b}, []routing.Agent{docker, bk}, nil, time.Unix(0, 0)); len(got) != 1 || got[0].Agent != "bk" {
		t.Fatalf("registry export routed %v, want to bk", got)
	}
	if got := routing.Route(routing.Config{}, []routing.Build{b}, []routing.Agent{docker}, nil, time.Unix(0, 0)); len(got) != 0 {
		t.Fatalf("registry export routed %v with only a Docker agent", got)
	}
}
