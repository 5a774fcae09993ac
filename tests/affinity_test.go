package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// farm is a distributed farm on several engines: one NATS server, a
// gateway, a scheduler and one single-slot agent per engine, each agent
// labelled engine=<its name>.
type farm struct {
	gateway string
	agents  map[string]*proc
}

func startFarm(t *testing.T, engines []*enginetest.Engine, schedulerArgs ...string) *farm {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	url := ns.ClientURL()
	gw := startProc(t, gatewayBin, "--nats-url", url, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	startProc(t, schedulerBin, append([]string{"--nats-url", url, "--http-listen", "127.0.0.1:0"}, schedulerArgs...)...)
	f := &farm{gateway: gw.addrs["grpc"], agents: map[string]*proc{}}
	for _, e := range engines {
		f.agents[e.Name] = startProc(t, agentBin, "--nats-url", url, "--name", e.Name, "--slots", "1",
			"--docker-host", e.Host, "--labels", "engine="+e.Name, "--http-listen", "127.0.0.1:0", "--blob-cache-dir", t.TempDir())
	}
	return f
}

// lineageBuild builds one revision of a lineage and returns its metadata
// and the CLI's output.
func lineageBuild(t *testing.T, f *farm, base, lineage string, revision int, extra ...string) (map[string]any, result) {
	t.Helper()
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo expensive-" + lineage + " > /expensive && sleep 1\nCOPY src.txt /src.txt\n",
		"src.txt":    fmt.Sprintf("%s revision %d\n", lineage, revision),
	})
	meta := filepath.Join(t.TempDir(), "meta.json")
	args := append([]string{"build", "--progress", "plain", "--repository", "git.example/" + lineage, "--metadata-file", meta}, extra...)
	r := kiln(t, f.gateway, append(args, dir)...)
	if r.code != 0 {
		t.Fatalf("build of %s revision %d: %s", lineage, revision, r)
	}
	return metadata(t, meta), r
}

func TestRebuildsLandOnTheAgentHoldingTheirCache(t *testing.T) {
	engines := enginetest.StartEngines(t, "aff-a", "aff-b", "aff-c")
	base := enginetest.BusyboxBase(t)
	f := startFarm(t, engines, "--route-delay", "30s")

	lineages := []string{"alpha", "bravo", "charlie"}
	home := map[string]string{}
	for _, l := range lineages {
		m, _ := lineageBuild(t, f, base, l, 0)
		home[l] = str(m, "kiln.agent")
	}
	for rev := 1; rev <= 2; rev++ {
		for _, l := range lineages {
			m, r := lineageBuild(t, f, base, l, rev)
			if got := str(m, "kiln.agent"); got != home[l] {
				t.Fatalf("%s revision %d ran on %s; its cache is on %s\n%s", l, rev, got, home[l], r.stderr)
			}
			// FROM excluded: the expensive RUN is reused, the changed COPY is not.
			if num(m, "kiln.cache.steps") != 2 || num(m, "kiln.cache.cached") != 1 {
				t.Fatalf("%s revision %d: %d of %d steps cached, want the RUN cached\n%s", l, rev, num(m, "kiln.cache.cached"), num(m, "kiln.cache.steps"), r.stderr)
			}
			mustContain(t, r.stderr, "cache score", "the assignment's reason")
		}
	}
}

func TestBusyPreferredAgentSpillsAfterTheDelay(t *testing.T) {
	engines := enginetest.StartEngines(t, "spill-a", "spill-b")
	base := enginetest.BusyboxBase(t)
	f := startFarm(t, engines, "--route-delay", "2s")

	m, _ := lineageBuild(t, f, base, "delta", 0)
	preferred := str(m, "kiln.agent")

	// Occupy the preferred agent with a long build pinned to it by label.
	bs, cs := farmClient(t, f)
	blob := tarContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo hold-" + uniq() + " && sleep 20\n"})
	ref, err := upload(t, cs, blob, digestOf(blob))
	if err != nil {
		t.Fatal(err)
	}
	hold, err := bs.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{AgentLabels: map[string]string{"engine": preferred}}, Context: ref})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the holding build to run on "+preferred, func() bool {
		b, err := bs.GetBuild(t.Context(), &kilnv1.GetBuildRequest{BuildId: hold.Build.Id})
		return err == nil && b.Build.State == kilnv1.BuildState_BUILD_STATE_RUNNING && b.Build.Agent == preferred
	})

	m, r := lineageBuild(t, f, base, "delta", 1)
	if got := str(m, "kiln.agent"); got == preferred {
		t.Fatalf("rebuild waited for the busy preferred agent %s instead of spilling:\n%s", preferred, r.stderr)
	}
	mustContain(t, r.stderr, "spilled after 2", "the assignment's reason")
	mustContain(t, r.stderr, fmt.Sprintf("preferred agent %q busy", preferred), "the assignment's reason")
	// It spilled while the preferred agent was still busy: it did not wait for it.
	b, err := bs.GetBuild(t.Context(), &kilnv1.GetBuildRequest{BuildId: hold.Build.Id})
	if err != nil {
		t.Fatal(err)
	}
	if b.Build.State != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatalf("holding build is %s: the rebuild may have waited for it", b.Build.State)
	}
	if _, err := bs.CancelBuild(t.Context(), &kilnv1.CancelBuildRequest{BuildId: hold.Build.Id}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.stderr, "assigned to agent") {
		t.Fatalf("plain output does not say where the build went:\n%s", r.stderr)
	}
}

func farmClient(t *testing.T, f *farm) (kilnv1.BuildServiceClient, kilnv1.ContextServiceClient) {
	t.Helper()
	k := &kilnd{}
	k.addrs.GRPC = f.gateway
	return k.client(t)
}

// TestEngineOutageTakesAgentOutOfRotation: when an agent's engine stops
// answering, the agent reports itself unhealthy and builds go elsewhere.
func TestEngineOutageTakesAgentOutOfRotation(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	doomed, err := enginetest.Start("outage-a")
	if err != nil {
		t.Fatal(err)
	}
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { _ = doomed.Stop() }) }
	t.Cleanup(stop)
	healthy := enginetest.StartEngine(t, "outage-b")
	f := startFarm(t, []*enginetest.Engine{doomed, healthy}, "--route-delay", "1s")
	stop() // the engine of agent outage-a goes away
	waitFor(t, time.Minute, "outage-a to report its engine unhealthy", func() bool {
		r := kiln(t, f.gateway, "agents", "--format", "json")
		return r.code == 0 && strings.Contains(r.stdout, `"name":"outage-a"`) && strings.Contains(r.stdout, "AGENT_STATE_UNHEALTHY")
	})
	for i := range 3 { // whatever the lineage, nothing goes to the broken agent
		m, r := lineageBuild(t, f, base, fmt.Sprintf("outage-%d-%s", i, uniq()), 0)
		if got := str(m, "kiln.agent"); got != "outage-b" {
			t.Fatalf("build ran on %s, whose engine is down:\n%s", got, r.stderr)
		}
	}
}
