package tests

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
)

// TestDrainAgentHoldsNewBuildsUntilUndrained runs kilnd with a tenants
// file holding an admin tenant and a team. The team's drain is refused
// (PermissionDenied) and leaves the agent READY. The admin's drain
// (`kiln agents drain`) returns once the agent is DRAINING, which `kiln
// agents` shows; a build started then stays QUEUED through a later
// heartbeat that still says draining, while kilnd keeps running; the
// admin's undrain lets it run to SUCCEEDED.
func TestDrainAgentHoldsNewBuildsUntilUndrained(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	admin := tenantsAdd(t, file, "ops", "--admin")
	team := tenantsAdd(t, file, "team-drain")
	k := mustStartKilnd(t, dir, "--tenants-file", file)
	base := enginetest.BusyboxBase(t)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	adminClient, err := kilnsdk.Dial(ctx, k.addrs.GRPC, kilnsdk.WithToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer adminClient.Close()
	teamClient, err := kilnsdk.Dial(ctx, k.addrs.GRPC, kilnsdk.WithToken(team))
	if err != nil {
		t.Fatal(err)
	}
	defer teamClient.Close()

	// kilnd's one agent, as ListAgents shows it.
	agent := func() *kilnv1.Agent {
		t.Helper()
		agents, err := adminClient.Agents(ctx)
		if err != nil {
			t.Fatalf("ListAgents as admin: %v", err)
		}
		if len(agents) != 1 {
			t.Fatalf("ListAgents: %d agents, want kilnd's one", len(agents))
		}
		return agents[0]
	}
	waitFor(t, time.Minute, "kilnd's agent READY", func() bool {
		return agent().State == kilnv1.AgentState_AGENT_STATE_READY
	})
	name := agent().Name

	// A tenant without the admin role cannot drain it.
	r := kiln(t, k.addrs.GRPC, "agents", "drain", "--token", team, name)
	if r.code != 2 || !strings.Contains(r.stderr, "PermissionDenied") || !strings.Contains(r.stderr, "admin") {
		t.Fatalf("kiln agents drain with a tenant's token: %s\nwant exit 2, PermissionDenied", r)
	}
	if _, err := teamClient.DrainAgent(ctx, name, false); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DrainAgent with a tenant's token: %v, want PermissionDenied", err)
	}
	if s := agent().State; s != kilnv1.AgentState_AGENT_STATE_READY {
		t.Fatalf("agent %v after refused drains, want READY", s)
	}
	if _, err := adminClient.DrainAgent(ctx, "no-such-agent", false); status.Code(err) != codes.NotFound {
		t.Fatalf("DrainAgent of an unknown agent: %v, want NotFound", err)
	}

	// The admin drains it; the answer is the agent's acknowledgement.
	r = kiln(t, k.addrs.GRPC, "agents", "drain", "--token", admin, name)
	if r.code != 0 || !strings.Contains(r.stdout, name) || !strings.Contains(r.stdout, "draining") {
		t.Fatalf("kiln agents drain as admin: %s\nwant the agent listed as draining", r)
	}
	r = kiln(t, k.addrs.GRPC, "agents", "--token", admin)
	if r.code != 0 || !strings.Contains(r.stdout, "draining") {
		t.Fatalf("kiln agents after the drain: %s\nwant the agent draining", r)
	}
	drainedAt := agent().LastSeen.AsTime()

	// A build started now stays QUEUED: through a heartbeat written after
	// it was queued that still says draining, its record is QUEUED.
	bctx, err := kilnsdk.PackContext(ctx, writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo drained-" + uniq() + "\n",
	}), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := teamClient.UploadContext(ctx, bctx); err != nil {
		t.Fatal(err)
	}
	build, err := teamClient.Build(ctx, kilnsdk.BuildRequest{Context: bctx})
	if err != nil {
		t.Fatalf("Build while the agent is drained: %v", err)
	}
	b := build.Record()
	queuedAt := b.GetCreatedAt().AsTime()
	if queuedAt.Before(drainedAt) {
		queuedAt = drainedAt
	}
	waitFor(t, time.Minute, "a heartbeat after the build was queued", func() bool {
		a := agent()
		if a.State != kilnv1.AgentState_AGENT_STATE_DRAINING {
			t.Fatalf("agent %v while drained, want DRAINING", a.State)
		}
		return a.LastSeen.AsTime().After(queuedAt)
	})
	got, err := teamClient.Get(ctx, b.Id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != kilnv1.BuildState_BUILD_STATE_QUEUED {
		t.Fatalf("build %s is %v while the only agent is drained, want QUEUED", b.Id, got.State)
	}
	select {
	case <-k.exited:
		t.Fatalf("kilnd exited on a drain: %v", k.err)
	default:
	}

	// Undrained, the agent takes the build.
	a, err := adminClient.DrainAgent(ctx, name, true)
	if err != nil || a.State != kilnv1.AgentState_AGENT_STATE_READY {
		t.Fatalf("undrain as admin: %v, %v; want READY", err, a)
	}
	final, err := build.Wait(ctx)
	if err != nil || final.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build after the undrain: %v, %v; want SUCCEEDED", err, final.GetState())
	}
}
