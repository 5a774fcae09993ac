package scheduler

import (
	"maps"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
)

// A build for one platform goes to an agent that builds it, natively or
// emulated, and waits while none does; one naming none goes anywhere.
func TestPlatformRouting(t *testing.T) {
	amd := &kilnv1.Agent{Platforms: []string{"linux/amd64"}}
	amdQemu := &kilnv1.Agent{Platforms: []string{"linux/amd64"}, EmulatedPlatforms: []string{"linux/arm64"}}
	arm := &kilnv1.Agent{Platforms: []string{"linux/arm64"}}
	if got, want := routingAgentLabels(amdQemu), map[string]string{"kiln.platform.linux/amd64": "true", "kiln.platform.linux/arm64": "true"}; !maps.Equal(got, want) {
		t.Fatalf("agent labels %v, want %v", got, want)
	}
	for _, tt := range []struct {
		name      string
		platforms []string
		agents    map[string]*kilnv1.Agent
		want      string // "" = stays queued
	}{
		{"arm64 to the arm64 agent", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd, "arm": arm}, "arm"},
		{"amd64 to the amd64 agent", []string{"linux/amd64"}, map[string]*kilnv1.Agent{"amd": amd, "arm": arm}, "amd"},
		{"arm64 emulated", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd, "qemu": amdQemu}, "qemu"},
		{"arm64 nowhere", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd}, ""},
		{"no platform anywhere", nil, map[string]*kilnv1.Agent{"arm": arm}, "arm"},
	} {
		var agents []routing.Agent
		for name, a := range tt.agents {
			agents = append(agents, routing.Agent{Name: name, FreeSlots: 1, Slots: 1, Labels: routingAgentLabels(a)})
		}
		b := routing.Build{ID: "b1", Tenant: "t", Lineage: "L", QueuedAt: time.Unix(0, 0),
			Labels: routingBuildLabels(&kilnv1.BuildSpec{Platforms: tt.platforms})}
		got := routing.Route(routing.Config{}, []routing.Build{b}, agents, nil, time.Unix(0, 0))
		switch {
		case tt.want == "" && len(got) != 0:
			t.Errorf("%s: routed to %v, want queued", tt.name, got)
		case tt.want != "" && (len(got) != 1 || got[0].Agent != tt.want):
			t.Errorf("%s: routed %v, want to %s", tt.name, got, tt.want)
		}
	}
}
