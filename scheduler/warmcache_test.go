package scheduler

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// dispatcherHears applies to s's dispatcher, in the test's goroutine, the
// events sent to it, until cond holds.
func dispatcherHears(t *testing.T, s *Scheduler, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case ev := <-s.d.events:
			s.d.apply(ev)
		case <-ctx.Done():
			t.Fatalf("the dispatcher never learnt %s", what)
		}
	}
}

// TestRegistryCacheSurvivesFailover: an agent's automatic cache export,
// reported after its build's finish through the schedulers' report
// handler, reaches the leader's dispatcher through the build watch; a new
// leader, recovering from the records alone, knows the lineage's registry
// cache and its cold-but-cached cost, learnt from a build that imported it.
func TestRegistryCacheSurvivesFailover(t *testing.T) {
	const prefix, lineage = "registry:5000/kiln-cache", "lineage-l"
	conn := bustest.Conn(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	h, err := agentproto.NewHandler(ctx, agentproto.HandlerConfig{Conn: conn, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	store, err := buildstore.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	leader, err := New(ctx, Config{Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan error, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	go func() { watched <- leader.watchBuilds(wctx) }()
	defer func() { stopWatch(); <-watched }()

	t0 := time.Now().Add(-time.Minute)
	record := func(ran time.Duration, steps, cached uint32, imported ...string) *kilnv1.Build {
		b := &kilnv1.Build{
			Id: buildstore.NewID(time.Now()), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Agent: "agent-a", Attempt: 1,
			Policy: &kilnv1.TenantPolicy{CacheRegistry: prefix}, Affinity: &kilnv1.Affinity{Lineage: lineage},
			StartedAt: timestamppb.New(t0), FinishedAt: timestamppb.New(t0.Add(ran)),
			Result: &kilnv1.BuildResult{Steps: steps, CachedSteps: cached, CacheImportedFrom: imported},
		}
		if _, err := store.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	record(8*time.Second, 4, 0) // cold
	record(time.Second, 4, 3)   // warm
	record(3*time.Second, 4, 4, cacheopt.WarmRef(prefix, "t", lineage))

	// The build agent-a runs, finishes and then exports automatically.
	b := &kilnv1.Build{Id: buildstore.NewID(time.Now()), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_ASSIGNED, Agent: "agent-a", Attempt: 1,
		Policy: &kilnv1.TenantPolicy{CacheRegistry: prefix}, Affinity: &kilnv1.Affinity{Lineage: lineage}}
	if _, err := store.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	c, err := agentproto.New(conn.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	at, _, err := c.Start(ctx, b, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{Steps: 4, CachedSteps: 3}, ""); err != nil {
		t.Fatal(err)
	}
	ref := cacheopt.WarmRef(prefix, "t", lineage)
	if err := at.AfterFinish(ctx, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
		Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: ref, Type: "registry", Mode: "max", Automatic: true, Duration: durationpb.New(time.Second),
	}}}); err != nil {
		t.Fatal(err)
	}
	dispatcherHears(t, leader, "the export", func() bool {
		lc := leader.d.costs.byLineage[lineage]
		return lc != nil && lc.registry
	})
	if lc := leader.d.costs.byLineage[lineage]; lc.warm != 0 || lc.cold != 0 {
		t.Fatalf("the export's record counted a run: %+v", lc)
	}

	// A new leader knows it all from the records.
	next, err := New(ctx, Config{Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.recoverState(ctx); err != nil {
		t.Fatal(err)
	}
	// recoverState has sent its events when it returns.
	for len(next.d.events) > 0 {
		next.d.apply(<-next.d.events)
	}
	rb := routing.Build{Lineage: lineage}
	next.d.costs.fill(&rb)
	// Warm: the warm record (1s) and the finished build's record (its run
	// time, about nothing); cold 8s; cold with the registry's cache 3s.
	if rb.Cold != 8*time.Second || rb.ColdCached != 3*time.Second || rb.Warm > time.Second {
		t.Fatalf("recovered costs: warm %v cold %v cold cached %v, want ≤1s, 8s, 3s", rb.Warm, rb.Cold, rb.ColdCached)
	}
}
