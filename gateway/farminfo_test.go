package gateway

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/lease"
)

// TestGetFarmInfo: the gateway's version is its own, the scheduler's is
// the one in the leader's live lease record (none once it lapsed), and the
// agents are the heartbeats, with their versions and engines: in full for
// an admin, without names, labels or cache for any other tenant.
func TestGetFarmInfo(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewAgentServiceClient(f.dial(t))
	ctx := t.Context()
	put := func(bucket, key string, m proto.Message) {
		t.Helper()
		kv, err := f.conn.JS.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, key, data); err != nil {
			t.Fatal(err)
		}
	}
	put(bus.BucketAgents, "agent-1", &kilnv1.Agent{
		Name: "agent-1", State: kilnv1.AgentState_AGENT_STATE_READY, Version: "v1.2.3-agent", Slots: 2,
		EngineVersion: "27.3.1", EngineApiVersion: "1.47", Os: "linux", Arch: "amd64",
		Builders: []kilnv1.Builder{kilnv1.Builder_BUILDER_BUILDKIT, kilnv1.Builder_BUILDER_CLASSIC},
		Labels:   map[string]string{"pool": "secret-pool"}, Cache: &kilnv1.CacheSummary{Lineages: []string{"l"}},
	})

	// No scheduler lease yet: no scheduler version.
	info, err := c.GetFarmInfo(as(ctx, tokenA), &kilnv1.GetFarmInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GatewayVersion != version.String() || info.GatewayVersion == "" || info.SchedulerVersion != "" {
		t.Fatalf("without a scheduler: gateway %q, scheduler %q; want %q and none", info.GatewayVersion, info.SchedulerVersion, version.String())
	}
	put(bus.BucketLeader, bus.LeaderKeyScheduler, &kilnv1.LeaderLease{Holder: "s1", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), Version: "v1.2.3-sched"})

	tenant, err := c.GetFarmInfo(as(ctx, tokenA), &kilnv1.GetFarmInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if tenant.SchedulerVersion != "v1.2.3-sched" || len(tenant.Agents) != 1 {
		t.Fatalf("tenant's farm info: %v", tenant)
	}
	a := tenant.Agents[0]
	if a.Version != "v1.2.3-agent" || a.EngineVersion != "27.3.1" || a.EngineApiVersion != "1.47" || len(a.Builders) != 2 || a.Os != "linux" ||
		a.Name != "" || a.Labels != nil || a.Cache != nil {
		t.Fatalf("a tenant sees agent %v; want versions and engine, no name, labels or cache", a)
	}
	admin, err := c.GetFarmInfo(as(ctx, tokenAdmin), &kilnv1.GetFarmInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if a := admin.Agents[0]; a.Name != "agent-1" || a.Labels["pool"] != "secret-pool" || a.Version != "v1.2.3-agent" {
		t.Fatalf("the admin sees agent %v", a)
	}

	// A lapsed lease: no scheduler leads.
	put(bus.BucketLeader, bus.LeaderKeyScheduler, &kilnv1.LeaderLease{Holder: "s1", ExpiresAt: timestamppb.New(time.Now().Add(-time.Second)), Version: "v1.2.3-sched"})
	info, err = c.GetFarmInfo(as(ctx, tokenA), &kilnv1.GetFarmInfoRequest{})
	if err != nil || info.SchedulerVersion != "" {
		t.Fatalf("with a lapsed lease: %q, %v; want none", info.GetSchedulerVersion(), err)
	}
}

// TestGetFarmInfoWithTheRolesPermissions: on a NATS server that enforces
// each role's permissions, the gateway reads the version a real scheduler
// lease record carries (services/lease stamps it).
func TestGetFarmInfoWithTheRolesPermissions(t *testing.T) {
	farm := bustest.AuthFarm(t)
	ctx := t.Context()
	el, err := lease.New(ctx, farm.Conn(t, bus.RoleScheduler, "").JS, bus.LeaderKeyScheduler, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := el.Try(ctx); err != nil || !held {
		t.Fatalf("the scheduler's lease: %v, %v", held, err)
	}
	g, err := New(ctx, Config{Conn: farm.Conn(t, bus.RoleGateway, "")})
	if err != nil {
		t.Fatal(err)
	}
	info, err := g.GetFarmInfo(ctx, &kilnv1.GetFarmInfoRequest{})
	if err != nil || info.SchedulerVersion != version.String() || info.GatewayVersion != version.String() {
		t.Fatalf("GetFarmInfo: %v, %v; want both versions %q", info, err, version.String())
	}
}
