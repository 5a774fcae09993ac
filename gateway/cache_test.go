package gateway

import (
	"flag"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/tenants"
)

// startCacheGateway serves, beside f's gateway and on its NATS, a gateway
// with --cache-registry farmPrefix whose tenants file gives team-a a
// cache_registry of its own and team-b none.
func startCacheGateway(t *testing.T, f *authFarm, farmPrefix string) kilnv1.BuildServiceClient {
	t.Helper()
	set, err := tenants.Parse([]byte("tenants:\n" +
		"  - name: team-a\n    tokens: ['" + f.hashes[tokenA] + "']\n    cache_registry: registry:5000/team-a-cache\n" +
		"  - name: team-b\n    tokens: ['" + f.hashes[tokenB] + "']\n"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(t.Context(), Config{Conn: f.conn, Tenants: set, Limits: Limits{CacheRegistry: farmPrefix}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := g.NewGRPCServer()
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return kilnv1.NewBuildServiceClient(cc)
}

func registryTo(ref string) []*kilnv1.CacheOption {
	return []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": ref, "mode": "max"}}}
}

// TestStartBuildCacheOptions: cache options the rules refuse are
// InvalidArgument with the rule's message; a type=registry --cache-to on
// a farm whose live agents lack the registry cache exporter is
// FailedPrecondition, for StartBuild and RetryBuild alike, and is queued
// once an agent advertises it. Nothing is recorded for a refused build.
func TestStartBuildCacheOptions(t *testing.T) {
	f := startAuthFarm(t)
	c := startCacheGateway(t, f, "")
	ctx := as(t.Context(), tokenA)
	start := func(from, to []*kilnv1.CacheOption) (*kilnv1.Build, error) {
		resp, err := c.StartBuild(ctx, &kilnv1.StartBuildRequest{
			Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", CacheFrom: from, CacheTo: to}, Context: f.ref,
		})
		return resp.GetBuild(), err
	}
	for _, tc := range []struct {
		from, to []*kilnv1.CacheOption
		want     string
	}{
		{to: []*kilnv1.CacheOption{{Type: "local", Attrs: map[string]string{"dest": "/tmp/c"}}}, want: "--cache-to type=local reads and writes a directory"},
		{from: []*kilnv1.CacheOption{{Type: "inline"}}, want: "--cache-from type=inline is not a cache source"},
		{to: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "Not A Ref"}}}, want: "is not an image reference"},
	} {
		_, err := start(tc.from, tc.to)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Fatalf("StartBuild with cache_from %v cache_to %v: %v, want InvalidArgument with %q", tc.from, tc.to, err, tc.want)
		}
	}
	before, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Live agents, none with the registry exporter.
	kv, err := f.conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func(name string, features ...string) {
		data, err := proto.Marshal(&kilnv1.Agent{Name: name, State: kilnv1.AgentState_AGENT_STATE_READY, EngineKind: "docker", Features: features})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(t.Context(), name, data); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat("docker-1", "cache-import", "cache-export-inline")
	_, err = start(nil, registryTo("registry:5000/app:cache"))
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != status.Convert(errNoRegistryExport).Message() {
		t.Fatalf("registry export without a BuildKit agent: %v", err)
	}
	if !strings.Contains(err.Error(), "kiln-agent --engine buildkit://") {
		t.Fatalf("the refusal does not say what to run: %v", err)
	}
	after, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("refused builds were recorded: %d records, then %d", len(before), len(after))
	}
	// type=inline needs no such agent.
	if _, err := start([]*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "registry:5000/app:cache"}}}, []*kilnv1.CacheOption{{Type: "inline"}}); err != nil {
		t.Fatalf("inline export on Docker agents: %v", err)
	}
	heartbeat("buildkit-1", "cache-import", "cache-export-inline", "cache-export-registry")
	b, err := start(nil, registryTo("registry:5000/app:cache"))
	if err != nil {
		t.Fatalf("registry export with a BuildKit agent live: %v", err)
	}
	if to := b.GetSpec().GetCacheTo(); len(to) != 1 || to[0].GetAttrs()["mode"] != "max" {
		t.Fatalf("recorded cache_to %v", to)
	}
	// The BuildKit agent goes; the finished build cannot be retried.
	if err := kv.Delete(t.Context(), "buildkit-1"); err != nil {
		t.Fatal(err)
	}
	changeRecord(t, f.conn, b.Id, func(r *kilnv1.Build) { r.State = kilnv1.BuildState_BUILD_STATE_FAILED })
	_, err = c.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: b.Id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--cache-to type=registry needs an agent") {
		t.Fatalf("RetryBuild of a registry export without a BuildKit agent: %v", err)
	}
}

// TestCacheRegistryStamped: a tenant's cache_registry wins over the
// gateway's --cache-registry, which the other tenants get; without
// either, none is stamped.
func TestCacheRegistryStamped(t *testing.T) {
	f := startAuthFarm(t)
	for _, tc := range []struct {
		farm, token, want string
	}{
		{"registry:5000/farm-cache", tokenA, "registry:5000/team-a-cache"},
		{"registry:5000/farm-cache", tokenB, "registry:5000/farm-cache"},
		{"", tokenB, ""},
	} {
		c := startCacheGateway(t, f, tc.farm)
		// Each build differs, so none joins another in flight.
		spec := &kilnv1.BuildSpec{Dockerfile: "Dockerfile", BuildArgs: map[string]string{"CASE": tc.farm + tc.token}}
		resp, err := c.StartBuild(as(t.Context(), tc.token), &kilnv1.StartBuildRequest{Spec: spec, Context: f.ref})
		if err != nil {
			t.Fatal(err)
		}
		rec, _, err := f.g.builds.Get(t.Context(), resp.GetBuild().GetId())
		if err != nil {
			t.Fatal(err)
		}
		if got := rec.GetPolicy().GetCacheRegistry(); got != tc.want {
			t.Fatalf("--cache-registry %q, tenant %s: stamped %q, want %q", tc.farm, rec.Tenant, got, tc.want)
		}
	}
}

// TestCacheRegistryFlag: --cache-registry takes a repository prefix and
// refuses a tag or a bad name, as does New and a tenants file.
func TestCacheRegistryFlag(t *testing.T) {
	for v, ok := range map[string]bool{
		"registry:5000/kiln-cache": true, "ghcr.io/team/cache": true, "": true,
		"registry:5000/kiln-cache:tag": false, "Registry/UPPER": false, "a b": false,
	} {
		var l Limits
		fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		l.Flags(fs)
		err := fs.Parse([]string{"--cache-registry", v})
		if (err == nil) != ok || ok && l.CacheRegistry != v {
			t.Errorf("--cache-registry %q: %v (prefix %q)", v, err, l.CacheRegistry)
		}
		if err != nil && !strings.Contains(err.Error(), "repository prefix like registry:5000/kiln-cache") {
			t.Errorf("--cache-registry %q: %v does not say what it wants", v, err)
		}
		if !ok {
			f := startAuthFarm(t)
			if _, err := New(t.Context(), Config{Conn: f.conn, Limits: Limits{CacheRegistry: v}}); err == nil {
				t.Errorf("New with cache registry %q worked", v)
			}
			if _, err := tenants.Parse([]byte("tenants:\n  - name: t\n    tokens: ['" + f.hashes[tokenA] + "']\n    cache_registry: '" + v + "'\n")); err == nil || !strings.Contains(err.Error(), "cache_registry") {
				t.Errorf("tenants file with cache_registry %q: %v", v, err)
			}
		}
	}
}
