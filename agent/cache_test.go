package agent

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// cacheContext is a context whose Dockerfile's last COPY takes b.txt, the
// file a rebuild changes: every step before it can come from a cache.
func cacheContext(t *testing.T, a *Agent, base, n, b string) *kilnv1.ContextRef {
	t.Helper()
	c := &farmContext{t: t, blobs: a.blobs}
	c.file("Dockerfile", 0o644, 1_700_000_000, "FROM "+base+"\n"+
		"RUN echo one-"+n+" > /one\n"+
		"COPY a.txt /a.txt\n"+
		"RUN cat /one /a.txt > /both\n"+
		"COPY b.txt /b.txt\n"+
		"RUN cat /b.txt\n")
	c.file("a.txt", 0o644, 1_700_000_000, "a "+n+"\n")
	c.file("b.txt", 0o644, 1_700_000_000, b+"\n")
	return c.ref()
}

// agentOn is an agent named name on engine host, as testAgent's.
func agentOn(t *testing.T, conn *bus.Conn, name, host string) *Agent {
	t.Helper()
	h, err := agentproto.NewHandler(t.Context(), agentproto.HandlerConfig{Conn: conn, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	hctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(hctx) }()
	t.Cleanup(func() { stop(); <-served })
	o := EngineOptions{Engine: host}
	eng, err := o.openEngine(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	a, err := New(t.Context(), Config{
		Name: name, Engine: eng, Conn: conn, CacheDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.checkEngine(t.Context())
	return a
}

// runRecord runs build b on a as a slot would, waits for its automatic
// cache export's event when wantExport, and returns its record and events.
func runRecord(t *testing.T, a *Agent, b *kilnv1.Build, wantExport bool) (*kilnv1.Build, []*kilnv1.BuildEvent) {
	t.Helper()
	b.Id, b.State, b.Attempt, b.Agent = buildstore.NewID(time.Now()), kilnv1.BuildState_BUILD_STATE_ASSIGNED, 1, a.cfg.Name
	builds, err := buildstore.Open(t.Context(), a.cfg.Conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := builds.Create(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	a.runBuild(t.Context(), b)
	rec, _, err := builds.Get(t.Context(), b.Id)
	if err != nil {
		t.Fatal(err)
	}
	return rec, buildEvents(t, a.cfg.Conn, b.Id, wantExport)
}

// buildEvents reads a build's events up to its finished event, or up to
// the automatic cache export's event after it when wantExport.
func buildEvents(t *testing.T, conn *bus.Conn, id string, wantExport bool) []*kilnv1.BuildEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cons, err := conn.JS.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.EventsSubject(id)},
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer msgs.Stop()
	var out []*kilnv1.BuildEvent
	finished := false
	for {
		msg, err := msgs.Next(jetstream.NextContext(ctx))
		if err != nil {
			t.Fatalf("events of build %s (finished: %v): %v\n%s", id, finished, err, eventsText(out))
		}
		ev := &kilnv1.BuildEvent{}
		if err := bus.Decode(msg.Data(), ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
		if ev.GetFinished() != nil {
			finished = true
			if !wantExport {
				return out
			}
		}
		if c := ev.GetCache(); c != nil && c.GetKind() == kilnv1.CacheEvent_KIND_EXPORT && c.GetAutomatic() {
			if !finished {
				t.Fatalf("build %s: the automatic cache export came before the finished event", id)
			}
			return out
		}
	}
}

func eventsText(evs []*kilnv1.BuildEvent) string {
	var b strings.Builder
	for _, ev := range evs {
		switch {
		case ev.GetLog() != nil:
			fmt.Fprintf(&b, "%s\n", ev.GetLog().GetText())
		case ev.GetStepFinished() != nil:
			fmt.Fprintf(&b, "[step %d %q cached=%v]\n", ev.GetStepFinished().GetStep(), ev.GetStepFinished().GetInstruction(), ev.GetStepFinished().GetCached())
		case ev.GetCache() != nil:
			fmt.Fprintf(&b, "[cache %v]\n", ev.GetCache())
		}
	}
	return b.String()
}

// cacheEvents are a build's cache events of kind k.
func cacheEvents(evs []*kilnv1.BuildEvent, k kilnv1.CacheEvent_Kind) []*kilnv1.CacheEvent {
	var out []*kilnv1.CacheEvent
	for _, ev := range evs {
		if c := ev.GetCache(); c != nil && c.GetKind() == k {
			out = append(out, c)
		}
	}
	return out
}

// stepsCached maps each finished step's instruction to whether it came
// from the cache.
func stepsCached(evs []*kilnv1.BuildEvent) map[string]bool {
	out := map[string]bool{}
	for _, ev := range evs {
		if s := ev.GetStepFinished(); s != nil {
			out[s.GetInstruction()] = s.GetCached()
		}
	}
	return out
}

// checkWarmSteps fails unless every step after FROM and before
// "COPY b.txt" came from the cache and that step ran.
func checkWarmSteps(t *testing.T, what string, evs []*kilnv1.BuildEvent) {
	t.Helper()
	steps := stepsCached(evs)
	for _, in := range []string{"RUN echo one-", "COPY a.txt", "RUN cat /one", "COPY b.txt"} {
		found := false
		for inst := range steps {
			found = found || strings.Contains(inst, in)
		}
		if !found {
			t.Fatalf("%s: no finished step %q\n%s", what, in, eventsText(evs))
		}
	}
	for inst, cached := range steps {
		if strings.HasPrefix(inst, "FROM ") {
			continue // the base is loaded, never cached
		}
		changed := strings.Contains(inst, "COPY b.txt") || strings.Contains(inst, "RUN cat /b.txt")
		if cached == changed {
			t.Fatalf("%s: step %q cached=%v, want every step before COPY b.txt cached and the rest run\n%s", what, inst, cached, eventsText(evs))
		}
	}
}

// TestWarmStartOnDockerEngines: with a cache registry, a lineage's first
// build on a fresh Docker engine warns that there is nothing to import
// yet, succeeds, and after its finished event exports its cache inline
// (the image pushed as the lineage's warm ref); the lineage's next build,
// with one file changed, on another fresh Docker engine imports that ref
// and takes every step before the changed one from it.
func TestWarmStartOnDockerEngines(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	engines := enginetest.StartEngines(t, "warm-a", "warm-b")
	n := strings.ToLower(rand.Text()[:10])
	prefix := enginetest.Registry(t) + "/kiln-test-cache-" + n
	lineage := "lineage-" + n
	ref := cacheopt.WarmRef(prefix, "team", lineage)
	build := func(a *Agent, b string) *kilnv1.Build {
		return &kilnv1.Build{
			Tenant: "team", Spec: &kilnv1.BuildSpec{Tags: []string{"kiln-test/warm:" + n}},
			Context:  cacheContext(t, a, base, n, b),
			Affinity: &kilnv1.Affinity{Lineage: lineage},
			Policy:   &kilnv1.TenantPolicy{CacheRegistry: prefix},
		}
	}

	a := agentOn(t, conn, "warm-a-"+n, engines[0].Host)
	rec, evs := runRecord(t, a, build(a, "b one"), true)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("first build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
	}
	imports := cacheEvents(evs, kilnv1.CacheEvent_KIND_IMPORT)
	if len(imports) != 1 || imports[0].GetRef() != ref || !imports[0].GetAutomatic() || !strings.Contains(imports[0].GetError(), "does not exist") {
		t.Fatalf("first build's import events %v: want one automatic import of %s warning that it does not exist yet", imports, ref)
	}
	if len(rec.GetResult().GetCacheImportedFrom()) != 0 {
		t.Fatalf("first build imported from %v, want nothing", rec.GetResult().GetCacheImportedFrom())
	}
	exports := cacheEvents(evs, kilnv1.CacheEvent_KIND_EXPORT)
	if len(exports) != 1 || exports[0].GetRef() != ref || exports[0].GetType() != cacheopt.TypeInline || exports[0].GetError() != "" || exports[0].GetDuration().AsDuration() <= 0 {
		t.Fatalf("first build's export events %v: want one inline export to %s that worked", exports, ref)
	}
	// The build's own time does not hold the export: its result was
	// recorded before the export began.
	if rec.GetFinishedAt().AsTime().After(time.Now().Add(-exports[0].GetDuration().AsDuration())) {
		t.Fatalf("build finished at %v, within the export's %v before now", rec.GetFinishedAt().AsTime(), exports[0].GetDuration().AsDuration())
	}

	bAgent := agentOn(t, conn, "warm-b-"+n, engines[1].Host)
	rec, evs = runRecord(t, bAgent, build(bAgent, "b two"), true)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("second build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
	}
	imports = cacheEvents(evs, kilnv1.CacheEvent_KIND_IMPORT)
	if len(imports) != 1 || imports[0].GetError() != "" {
		t.Fatalf("second build's import events %v: want one import of %s that worked", imports, ref)
	}
	if got := rec.GetResult().GetCacheImportedFrom(); !slices.Equal(got, []string{ref}) {
		t.Fatalf("second build imported from %v, want [%s]", got, ref)
	}
	checkWarmSteps(t, "second build on a fresh engine", evs)
}

// TestWarmStartWithRegistryDownOnlyWarns: a cache registry that does not
// answer (a closed port) makes the import and the export warnings; the
// build succeeds.
func TestWarmStartWithRegistryDownOnlyWarns(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	n := strings.ToLower(rand.Text()[:10])
	a := testAgent(t, conn)
	a.checkEngine(t.Context())
	rec, evs := runRecord(t, a, &kilnv1.Build{
		Tenant: "team", Spec: &kilnv1.BuildSpec{},
		Context:  cacheContext(t, a, base, n, "b"),
		Affinity: &kilnv1.Affinity{Lineage: "lineage-" + n},
		Policy:   &kilnv1.TenantPolicy{CacheRegistry: closed + "/cache"},
	}, true)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
	}
	for _, k := range []kilnv1.CacheEvent_Kind{kilnv1.CacheEvent_KIND_IMPORT, kilnv1.CacheEvent_KIND_EXPORT} {
		got := cacheEvents(evs, k)
		if len(got) != 1 || got[0].GetError() == "" || !got[0].GetAutomatic() {
			t.Fatalf("%v events %v: want one automatic one with a warning", k, got)
		}
	}
}

// TestDockerRefusesRegistryCacheExport: a build that asks a Docker engine
// for --cache-to type=registry fails saying which engines can, before the
// engine runs anything.
func TestDockerRefusesRegistryCacheExport(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	n := strings.ToLower(rand.Text()[:10])
	a := testAgent(t, conn)
	a.checkEngine(t.Context())
	rec, evs := runRecord(t, a, &kilnv1.Build{
		Tenant:  "team",
		Spec:    &kilnv1.BuildSpec{CacheTo: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": enginetest.Registry(t) + "/c:" + n}}}},
		Context: cacheContext(t, a, base, n, "b"),
	}, false)
	if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(rec.Error, "cache-export-registry") || !strings.Contains(rec.Error, "buildkit://") {
		t.Fatalf("build %s %q: want FAILED naming the cache-export-registry feature and buildkit:// engines", rec.State, rec.Error)
	}
	if steps := stepsCached(evs); len(steps) != 0 {
		t.Fatalf("the engine ran steps %v of a refused build", steps)
	}
}

// TestInlineCacheFromAnImage: --cache-to type=inline and a push on one
// fresh Docker engine, then --cache-from the pushed image on another:
// every step before the changed one comes from the image's cache.
func TestInlineCacheFromAnImage(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	engines := enginetest.StartEngines(t, "inline-a", "inline-b")
	n := strings.ToLower(rand.Text()[:10])
	tag := enginetest.Registry(t) + "/kiln-test/inline:" + n
	a := agentOn(t, conn, "inline-a-"+n, engines[0].Host)
	rec, evs := runRecord(t, a, &kilnv1.Build{
		Tenant: "team", Context: cacheContext(t, a, base, n, "b one"),
		Spec: &kilnv1.BuildSpec{Tags: []string{tag}, Push: true, CacheTo: []*kilnv1.CacheOption{{Type: "inline"}}},
	}, false)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("first build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
	}
	b := agentOn(t, conn, "inline-b-"+n, engines[1].Host)
	rec, evs = runRecord(t, b, &kilnv1.Build{
		Tenant: "team", Context: cacheContext(t, b, base, n, "b two"),
		Spec: &kilnv1.BuildSpec{CacheFrom: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": tag}}}},
	}, false)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("second build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
	}
	if got := rec.GetResult().GetCacheImportedFrom(); !slices.Equal(got, []string{tag}) {
		t.Fatalf("second build imported from %v, want [%s]", got, tag)
	}
	checkWarmSteps(t, "build with --cache-from on a fresh engine", evs)
}
