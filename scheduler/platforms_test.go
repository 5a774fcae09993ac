package scheduler

import (
	"maps"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
)

// A build for one platform goes to an agent that builds it, natively
// preferred while one is free, else emulated, and waits while none builds
// it; one naming none goes anywhere.
func TestPlatformRouting(t *testing.T) {
	amd := &kilnv1.Agent{Platforms: []string{"linux/amd64"}}
	amdQemu := &kilnv1.Agent{Platforms: []string{"linux/amd64"}, EmulatedPlatforms: []string{"linux/arm64"}}
	arm := &kilnv1.Agent{Platforms: []string{"linux/arm64"}}
	if got, want := routingAgentLabels(amdQemu), map[string]string{"kiln.platform.linux/amd64": "true", "kiln.platform.native.linux/amd64": "true", "kiln.platform.linux/arm64": "true"}; !maps.Equal(got, want) {
		t.Fatalf("agent labels %v, want %v", got, want)
	}
	for _, tt := range []struct {
		name      string
		platforms []string
		agents    map[string]*kilnv1.Agent
		busy      string // an agent with no free slot
		warm      string // the agent holding the build's lineage
		want      string // "" = stays queued
	}{
		{"arm64 to the arm64 agent", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd, "arm": arm}, "", "", "arm"},
		{"amd64 to the amd64 agent", []string{"linux/amd64"}, map[string]*kilnv1.Agent{"amd": amd, "arm": arm}, "", "", "amd"},
		{"arm64 emulated", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd, "qemu": amdQemu}, "", "", "qemu"},
		{"arm64 native preferred", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"a-qemu": amdQemu, "z-arm": arm}, "", "", "z-arm"},
		{"arm64 native preferred over a warm emulated agent", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"a-qemu": amdQemu, "z-arm": arm}, "", "a-qemu", "z-arm"},
		{"arm64 emulated while native busy", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"a-qemu": amdQemu, "z-arm": arm}, "z-arm", "", "a-qemu"},
		{"arm64 nowhere", []string{"linux/arm64"}, map[string]*kilnv1.Agent{"amd": amd}, "", "", ""},
		{"no platform anywhere", nil, map[string]*kilnv1.Agent{"arm": arm}, "", "", "arm"},
	} {
		var agents []routing.Agent
		for name, a := range tt.agents {
			free := 1
			if name == tt.busy {
				free = 0
			}
			var lineages []string
			if name == tt.warm {
				lineages = []string{"L"}
			}
			agents = append(agents, routing.Agent{Name: name, FreeSlots: free, Slots: 1, Running: 1 - free, Labels: routingAgentLabels(a), Lineages: lineages})
		}
		spec := &kilnv1.BuildSpec{Platforms: tt.platforms}
		b := routing.Build{ID: "b1", Tenant: "t", Lineage: "L", QueuedAt: time.Unix(0, 0),
			Labels: routingBuildLabels(spec), Preferred: routingBuildPreferred(spec)}
		got := routing.Route(routing.Config{}, []routing.Build{b}, agents, nil, time.Unix(0, 0))
		switch {
		case tt.want == "" && len(got) != 0:
			t.Errorf("%s: routed to %v, want queued", tt.name, got)
		case tt.want != "" && (len(got) != 1 || got[0].Agent != tt.want):
			t.Errorf("%s: routed %v, want to %s", tt.name, got, tt.want)
		}
	}
}
