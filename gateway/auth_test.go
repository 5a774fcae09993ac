package gateway

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/logging/logtest"
	"github.com/kilnbuild/kiln/services/tenants"
)

// Tokens of the test farm's tenants.
const (
	tokenA     = "kiln_tenantatoken0000000000000000000000000000000"
	tokenA2    = "kiln_tenantasecondtoken00000000000000000000000000"
	tokenB     = "kiln_tenantbtoken0000000000000000000000000000000"
	tokenAdmin = "kiln_admintoken0000000000000000000000000000000000"
)

// authFarm is a multi-tenant gateway on a real in-process NATS server,
// served over gRPC on a loopback listener, with a build context stored.
type authFarm struct {
	g    *Gateway
	conn *bus.Conn
	addr string
	ref  *kilnv1.ContextRef
	logs *logtest.Buffer
	// hashes of the tokens, to write reloaded tenants files.
	hashes map[string]string
}

// tenantsYAML is the test farm's tenants file, with the tokens in keep.
func (f *authFarm) tenantsYAML(keep ...string) []byte {
	has := func(tok string) bool {
		for _, k := range keep {
			if k == tok {
				return true
			}
		}
		return false
	}
	var b strings.Builder
	b.WriteString("tenants:\n")
	tenant := func(name string, extra string, toks ...string) {
		var hs []string
		for _, t := range toks {
			if has(t) {
				hs = append(hs, "'"+f.hashes[t]+"'")
			}
		}
		if len(hs) == 0 {
			return
		}
		b.WriteString("  - name: " + name + "\n    tokens: [" + strings.Join(hs, ", ") + "]\n" + extra)
	}
	tenant("team-a", "    push: ['registry.example.com/team-a/*']\n    weight: 3\n    max_concurrent: 2\n    context_max_entries: 2\n    policy:\n      allow_remote_add: true\n", tokenA, tokenA2)
	tenant("team-b", "    push: ['registry.example.com/team-b/*']\n", tokenB)
	tenant("ops", "    admin: true\n", tokenAdmin)
	return []byte(b.String())
}

var allTokens = []string{tokenA, tokenA2, tokenB, tokenAdmin}

func startAuthFarm(t *testing.T, serverOpts ...grpc.ServerOption) *authFarm {
	t.Helper()
	ctx := t.Context()
	f := &authFarm{conn: bustest.Conn(t), logs: &logtest.Buffer{}, hashes: map[string]string{}}
	for _, tok := range allTokens {
		h, err := tenants.HashToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		f.hashes[tok] = h
	}
	set, err := tenants.Parse(f.tenantsYAML(allTokens...))
	if err != nil {
		t.Fatal(err)
	}
	f.g, err = New(ctx, Config{Conn: f.conn, Tenants: set, Logger: slog.New(slog.NewJSONHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	gs := f.g.NewGRPCServer(serverOpts...)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })

	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	dockerfile := []byte("FROM scratch\n")
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(dockerfile)
	tw.Close()
	sum := sha256.Sum256(tarball.Bytes())
	digest := &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(tarball.Len())}
	blobs, err := cas.Open(ctx, f.conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := blobs.Put(ctx, digest.Hash, digest.SizeBytes, bytes.NewReader(tarball.Bytes())); err != nil {
		t.Fatal(err)
	}
	f.ref = &kilnv1.ContextRef{Digest: digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}
	return f
}

// dial returns a plaintext connection to the farm.
func (f *authFarm) dial(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(f.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// as returns ctx carrying token as the bearer token ("" for none).
func as(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func (f *authFarm) start(t *testing.T, c kilnv1.BuildServiceClient, token string, tags ...string) *kilnv1.Build {
	t.Helper()
	resp, err := c.StartBuild(as(t.Context(), token), &kilnv1.StartBuildRequest{
		Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Tags: tags}, Context: f.ref,
	})
	if err != nil {
		t.Fatalf("StartBuild: %v", err)
	}
	return resp.Build
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %v", what, err, code)
	}
}

func TestAuthUnauthenticated(t *testing.T) {
	f := startAuthFarm(t)
	cc := f.dial(t)
	c := kilnv1.NewBuildServiceClient(cc)
	ctx := t.Context()
	for name, md := range map[string][]string{
		"no token":      nil,
		"wrong token":   {"authorization", "Bearer kiln_notavalidtoken00000000000000000000000000"},
		"not bearer":    {"authorization", "Basic " + tokenA},
		"empty bearer":  {"authorization", "Bearer "},
		"plain token":   {"authorization", tokenA},
		"two of them":   {"authorization", "Bearer " + tokenA, "authorization", "Bearer " + tokenB},
		"other header":  {"x-token", tokenA},
		"token in path": {"authorization", "Bearer " + tokenA + "x"},
	} {
		t.Run(name, func(t *testing.T) {
			cctx := ctx
			if md != nil {
				cctx = metadata.AppendToOutgoingContext(ctx, md...)
			}
			_, err := c.ListBuilds(cctx, &kilnv1.ListBuildsRequest{})
			wantCode(t, "ListBuilds", err, codes.Unauthenticated)
			_, err = c.StartBuild(cctx, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile"}, Context: f.ref})
			wantCode(t, "StartBuild", err, codes.Unauthenticated)
			w, err := c.WatchBuild(cctx, &kilnv1.WatchBuildRequest{BuildId: "x"})
			if err == nil {
				_, err = w.Recv()
			}
			wantCode(t, "WatchBuild", err, codes.Unauthenticated)
			_, err = kilnv1.NewContextServiceClient(cc).FindMissingBlobs(cctx, &kilnv1.FindMissingBlobsRequest{})
			wantCode(t, "FindMissingBlobs", err, codes.Unauthenticated)
		})
	}
	// The message helps, and names no token.
	_, err := c.ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
	if !strings.Contains(status.Convert(err).Message(), "--token") {
		t.Errorf("no-token message %q does not say how to pass one", status.Convert(err).Message())
	}
	// Health needs no token.
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check without token: %v", err)
	}
	// Nothing was stored.
	if all, err := f.g.builds.List(ctx); err != nil || len(all) != 0 {
		t.Fatalf("builds stored: %d, %v", len(all), err)
	}
	if strings.Contains(f.logs.String(), tokenA) {
		t.Fatal("a token reached the log")
	}
}

func TestAuthOtherTenantsBuildsAreNotFound(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := t.Context()
	bBuild := f.start(t, c, tokenB, "registry.example.com/team-b/app:1")
	aBuild := f.start(t, c, tokenA, "registry.example.com/team-a/app:1")

	_, err := c.GetBuild(as(ctx, tokenA), &kilnv1.GetBuildRequest{BuildId: bBuild.Id})
	wantCode(t, "A GetBuild of B's build", err, codes.NotFound)
	_, err = c.CancelBuild(as(ctx, tokenA), &kilnv1.CancelBuildRequest{BuildId: bBuild.Id})
	wantCode(t, "A CancelBuild of B's build", err, codes.NotFound)
	w, err := c.WatchBuild(as(ctx, tokenA), &kilnv1.WatchBuildRequest{BuildId: bBuild.Id})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, "A WatchBuild of B's build", err, codes.NotFound)
	// Same answer as for a build that does not exist.
	_, err = c.GetBuild(as(ctx, tokenA), &kilnv1.GetBuildRequest{BuildId: buildstore.NewID(time.Now())})
	wantCode(t, "GetBuild of an unknown build", err, codes.NotFound)

	// B's build is untouched and B still watches it.
	got, err := c.GetBuild(as(ctx, tokenB), &kilnv1.GetBuildRequest{BuildId: bBuild.Id})
	if err != nil || got.Build.State != kilnv1.BuildState_BUILD_STATE_QUEUED || got.Build.CancelRequested {
		t.Fatalf("B's build after A's attempts: %v, %v", got.GetBuild(), err)
	}
	w, err = c.WatchBuild(as(ctx, tokenB), &kilnv1.WatchBuildRequest{BuildId: bBuild.Id})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := w.Recv()
	if err != nil || ev.Event.GetState().GetState() != kilnv1.BuildState_BUILD_STATE_QUEUED {
		t.Fatalf("B's watch: %v, %v", ev, err)
	}

	// ListBuilds shows each tenant its own.
	for tok, want := range map[string]string{tokenA: aBuild.Id, tokenA2: aBuild.Id, tokenB: bBuild.Id} {
		l, err := c.ListBuilds(as(ctx, tok), &kilnv1.ListBuildsRequest{})
		if err != nil || len(l.Builds) != 1 || l.Builds[0].Id != want {
			t.Fatalf("ListBuilds: %v, %v; want only %s", l.GetBuilds(), err, want)
		}
	}
	l, err := c.ListBuilds(as(ctx, tokenAdmin), &kilnv1.ListBuildsRequest{})
	if err != nil || len(l.Builds) != 0 {
		t.Fatalf("admin's ListBuilds: %v, %v; want none (admin lists agents, not others' builds)", l.GetBuilds(), err)
	}
	// A's second token is the same tenant: it may cancel A's build.
	if _, err := c.CancelBuild(as(ctx, tokenA2), &kilnv1.CancelBuildRequest{BuildId: aBuild.Id}); err != nil {
		t.Fatalf("A cancels its own build with its second token: %v", err)
	}
}

func TestAuthPushNamespaces(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := t.Context()
	info, err := f.conn.JS.Stream(ctx, bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{
		"registry.example.com/team-b/app:1",
		"REGISTRY.example.com/team-b/app:1", // hosts compare case-insensitively
		"registry.example.com/team-a-evil/app",
		"registry.example.com/team-a",
		"alpine:latest",
		"docker.io/library/alpine",
	} {
		_, err := c.StartBuild(as(ctx, tokenA), &kilnv1.StartBuildRequest{
			Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Tags: []string{"registry.example.com/team-a/ok:1", tag}, Push: true}, Context: f.ref,
			IdempotencyKey: "k-" + tag,
		})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "team-a") {
			t.Fatalf("A pushes %s: %v, want PermissionDenied naming the tenant", tag, err)
		}
	}
	// Without push too: a tag names an image on the agent's engine.
	_, err = c.StartBuild(as(ctx, tokenA), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Tags: []string{"registry.example.com/team-b/app:1"}}, Context: f.ref})
	wantCode(t, "A tags into B's namespace without push", err, codes.PermissionDenied)

	// Nothing stored, nothing queued, no idempotency key claimed.
	if all, err := f.g.builds.List(ctx); err != nil || len(all) != 0 {
		t.Fatalf("builds stored: %d, %v", len(all), err)
	}
	if _, err := info.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if info.CachedInfo().State.Msgs != 0 {
		t.Fatalf("%d messages on %s", info.CachedInfo().State.Msgs, bus.SubjectRequests)
	}
	keys, err := f.g.idem.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Fatalf("idempotency key %s claimed", k)
	}
	// The tenant's own namespace is fine.
	f.start(t, c, tokenA, "registry.example.com/team-a/app:1", "registry.example.com/team-a/sub/app:2")
}

func TestAuthPolicyStampedAndLimits(t *testing.T) {
	f := startAuthFarm(t)
	cc := f.dial(t)
	c := kilnv1.NewBuildServiceClient(cc)
	ctx := t.Context()
	b := f.start(t, c, tokenA)
	rec, _, err := f.g.builds.Get(ctx, b.Id)
	if err != nil {
		t.Fatal(err)
	}
	if p := rec.Policy; rec.Tenant != "team-a" || p == nil || p.Weight != 3 || p.MaxConcurrent != 2 || !p.AllowRemoteAdd || p.AllowNetworkHost {
		t.Fatalf("record tenant %q policy %v", rec.Tenant, rec.Policy)
	}
	// team-a's context_max_entries (2) is lower than the gateway's.
	m := &kilnv1.ContextManifest{}
	for _, name := range []string{"Dockerfile", "a", "b"} {
		m.Entries = append(m.Entries, &kilnv1.ContextEntry{Path: name, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644,
			Digest: &kilnv1.Digest{Hash: "sha256:" + strings.Repeat("0", 64), SizeBytes: 0}})
	}
	_, err = kilnv1.NewContextServiceClient(cc).PutManifest(as(ctx, tokenA), &kilnv1.PutManifestRequest{Manifest: m})
	if err == nil || !strings.Contains(err.Error(), "2") {
		t.Fatalf("PutManifest of 3 entries for a tenant limited to 2: %v", err)
	}
	_, err = kilnv1.NewContextServiceClient(cc).PutManifest(as(ctx, tokenB), &kilnv1.PutManifestRequest{Manifest: m})
	if status.Code(err) == codes.Unauthenticated || (err != nil && strings.Contains(err.Error(), "entries")) {
		t.Fatalf("PutManifest of 3 entries for a tenant with the gateway's limits: %v", err)
	}
}

func TestAuthAdmin(t *testing.T) {
	f := startAuthFarm(t)
	agents := kilnv1.NewAgentServiceClient(f.dial(t))
	_, err := agents.ListAgents(as(t.Context(), tokenA), &kilnv1.ListAgentsRequest{})
	wantCode(t, "ListAgents without admin", err, codes.PermissionDenied)
	if _, err := agents.ListAgents(as(t.Context(), tokenAdmin), &kilnv1.ListAgentsRequest{}); err != nil {
		t.Fatalf("ListAgents as admin: %v", err)
	}
}

// TestAuthDrainAgent: DrainAgent needs an admin token (a tenant's is
// PermissionDenied and the agent hears nothing), an unknown agent is
// NotFound, one that does not listen is Unavailable, and an admin's drain
// returns the agent's answer. The agent is a real NATS client with a
// heartbeat that answers its drain subject as an agent does.
func TestAuthDrainAgent(t *testing.T) {
	f := startAuthFarm(t)
	agents := kilnv1.NewAgentServiceClient(f.dial(t))
	kv, err := f.conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func(name string) {
		data, err := proto.Marshal(&kilnv1.Agent{Name: name, State: kilnv1.AgentState_AGENT_STATE_READY})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(t.Context(), name, data); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat("agent-1")
	heartbeat("silent-agent") // a heartbeat, but nothing listens
	requests := make(chan *kilnv1.DrainAgentRequest, 8)
	sub, err := f.conn.NC.Subscribe(bus.DrainSubject("agent-1"), func(m *nats.Msg) {
		req := &kilnv1.DrainAgentRequest{}
		if err := bus.Decode(m.Data, req); err != nil {
			t.Error(err)
			return
		}
		requests <- req
		state := kilnv1.AgentState_AGENT_STATE_DRAINING
		if req.Undrain {
			state = kilnv1.AgentState_AGENT_STATE_READY
		}
		reply, err := bus.NewMsg(m.Reply, &kilnv1.DrainAgentResponse{Agent: &kilnv1.Agent{Name: "agent-1", State: state}})
		if err == nil {
			err = m.RespondMsg(reply)
		}
		if err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for _, tok := range []string{tokenA, tokenB} {
		for _, undrain := range []bool{false, true} {
			_, err := agents.DrainAgent(as(t.Context(), tok), &kilnv1.DrainAgentRequest{Name: "agent-1", Undrain: undrain})
			wantCode(t, "DrainAgent without admin", err, codes.PermissionDenied)
		}
	}
	_, err = agents.DrainAgent(as(t.Context(), ""), &kilnv1.DrainAgentRequest{Name: "agent-1"})
	wantCode(t, "DrainAgent without a token", err, codes.Unauthenticated)
	_, err = agents.DrainAgent(as(t.Context(), tokenAdmin), &kilnv1.DrainAgentRequest{Name: "no-such-agent"})
	wantCode(t, "DrainAgent of an unknown agent", err, codes.NotFound)
	_, err = agents.DrainAgent(as(t.Context(), tokenAdmin), &kilnv1.DrainAgentRequest{Name: "a.>"})
	wantCode(t, "DrainAgent of a wildcard name", err, codes.InvalidArgument)
	_, err = agents.DrainAgent(as(t.Context(), tokenAdmin), &kilnv1.DrainAgentRequest{Name: "silent-agent"})
	wantCode(t, "DrainAgent of an agent that does not listen", err, codes.Unavailable)
	if !strings.Contains(status.Convert(err).Message(), "silent-agent") {
		t.Fatalf("Unavailable does not name the agent: %v", err)
	}

	// The refused calls reached no agent: the admin's drain is the first
	// request agent-1 hears.
	resp, err := agents.DrainAgent(as(t.Context(), tokenAdmin), &kilnv1.DrainAgentRequest{Name: "agent-1"})
	if err != nil {
		t.Fatalf("DrainAgent as admin: %v", err)
	}
	if resp.GetAgent().GetState() != kilnv1.AgentState_AGENT_STATE_DRAINING {
		t.Fatalf("DrainAgent answered %v, want DRAINING", resp.GetAgent())
	}
	if req := <-requests; req.Name != "agent-1" || req.Undrain {
		t.Fatalf("agent heard %v first, want the admin's drain", req)
	}
	resp, err = agents.DrainAgent(as(t.Context(), tokenAdmin), &kilnv1.DrainAgentRequest{Name: "agent-1", Undrain: true})
	if err != nil || resp.GetAgent().GetState() != kilnv1.AgentState_AGENT_STATE_READY {
		t.Fatalf("undrain as admin: %v, %v; want READY", err, resp.GetAgent())
	}
	if req := <-requests; !req.Undrain {
		t.Fatalf("agent heard %v, want the undrain", req)
	}
}

// TestAuthRevocation: a reload that drops a token refuses it at once and
// ends its open watch with Unauthenticated; other tokens are unaffected.
func TestAuthRevocation(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := t.Context()
	aBuild := f.start(t, c, tokenA)
	bBuild := f.start(t, c, tokenB)
	watch := func(token, id string) kilnv1.BuildService_WatchBuildClient {
		w, err := c.WatchBuild(as(ctx, token), &kilnv1.WatchBuildRequest{BuildId: id})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil { // QUEUED: the stream is open
			t.Fatal(err)
		}
		return w
	}
	wa, wa2, wb := watch(tokenA, aBuild.Id), watch(tokenA2, aBuild.Id), watch(tokenB, bBuild.Id)

	// A bad file changes nothing.
	if _, err := tenants.Parse([]byte("tenants: [{name: x}]")); err == nil {
		t.Fatal("bad tenants file parsed")
	}
	set, err := tenants.Parse(f.tenantsYAML(tokenA2, tokenB, tokenAdmin)) // tokenA revoked
	if err != nil {
		t.Fatal(err)
	}
	if n := f.g.ReloadTenants(set); n != 1 {
		t.Fatalf("reload ended %d streams, want 1", n)
	}
	_, err = wa.Recv()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token's watch: %v, want Unauthenticated (revoked)", err)
	}
	_, err = c.GetBuild(as(ctx, tokenA), &kilnv1.GetBuildRequest{BuildId: aBuild.Id})
	wantCode(t, "GetBuild with the revoked token", err, codes.Unauthenticated)
	if _, err := c.GetBuild(as(ctx, tokenA2), &kilnv1.GetBuildRequest{BuildId: aBuild.Id}); err != nil {
		t.Fatalf("A's other token after the reload: %v", err)
	}
	// The other streams stay open: a cancel reaches them as an event.
	if _, err := c.CancelBuild(as(ctx, tokenB), &kilnv1.CancelBuildRequest{BuildId: bBuild.Id}); err != nil {
		t.Fatal(err)
	}
	if ev, err := wb.Recv(); err != nil || ev.Event.GetFinished() == nil {
		t.Fatalf("B's watch after the reload: %v, %v", ev, err)
	}
	if _, err := c.CancelBuild(as(ctx, tokenA2), &kilnv1.CancelBuildRequest{BuildId: aBuild.Id}); err != nil {
		t.Fatal(err)
	}
	if ev, err := wa2.Recv(); err != nil || ev.Event.GetFinished() == nil {
		t.Fatalf("A's second token's watch after the reload: %v, %v", ev, err)
	}
}

// TestLocalMode: without a tenants file every call is the local tenant's,
// with no token, and only loopback listen addresses are allowed.
func TestLocalMode(t *testing.T) {
	g, err := New(t.Context(), Config{Conn: bustest.Conn(t)})
	if err != nil {
		t.Fatal(err)
	}
	if g.auth.set.Load() != nil {
		t.Fatal("gateway without tenants is multi-tenant")
	}
	ctx := t.Context()
	c, err := g.auth.authenticate(ctx, "/kiln.v1.BuildService/ListBuilds")
	if err != nil || c.tenant.Name != LocalTenant || !c.local || !c.tenant.Admin {
		t.Fatalf("local caller %+v, %v", c, err)
	}
	for addr, ok := range map[string]bool{
		"127.0.0.1:7700": true, "localhost:0": true, "[::1]:7700": true,
		"0.0.0.0:7700": false, ":7700": false, "10.0.0.1:7700": false, "[::]:7700": false,
	} {
		err := TenantsFlags{}.CheckListen(addr)
		if (err == nil) != ok {
			t.Errorf("local mode, --listen %s: %v", addr, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--tenants-file") {
			t.Errorf("error %q does not say how to fix it", err)
		}
		if err := (TenantsFlags{File: "t.yaml"}).CheckListen(addr); err != nil {
			t.Errorf("multi-tenant, --listen %s: %v", addr, err)
		}
	}
}

// pki is a CA and the certificates it signed, written as PEM files.
type pki struct {
	dir          string
	ca           *x509.Certificate
	caKey        *ecdsa.PrivateKey
	caFile       string
	serverCert   string
	serverKeyPEM string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", der)
	p.serverCert, p.serverKeyPEM = p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue returns the cert and key files of a certificate for 127.0.0.1.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
}

// TestMutualTLS: a gateway with --tls-client-ca refuses clients without a
// certificate or with one another CA signed.
func TestMutualTLS(t *testing.T) {
	farmCA, otherCA := newPKI(t, "farm"), newPKI(t, "other")
	srv, err := TLSFlags{Cert: farmCA.serverCert, Key: farmCA.serverKeyPEM, ClientCA: farmCA.caFile}.Server()
	if err != nil {
		t.Fatal(err)
	}
	f := startAuthFarm(t, srv.ServerOptions()...)
	goodCert, goodKey := farmCA.issue(t, "client", x509.ExtKeyUsageClientAuth)
	otherCert, otherKey := otherCA.issue(t, "client", x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AddCert(farmCA.ca)
	client := func(cert, key string) kilnv1.BuildServiceClient {
		cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if cert != "" {
			kp, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{kp}
		}
		return kilnv1.NewBuildServiceClient(f.dial(t, grpc.WithTransportCredentials(credentials.NewTLS(cfg))))
	}
	list := func(c kilnv1.BuildServiceClient) error {
		_, err := c.ListBuilds(as(t.Context(), tokenA), &kilnv1.ListBuildsRequest{})
		return err
	}
	if err := list(client(goodCert, goodKey)); err != nil {
		t.Fatalf("client with the farm CA's certificate: %v", err)
	}
	for name, c := range map[string]kilnv1.BuildServiceClient{
		"no client certificate":          client("", ""),
		"certificate from another CA":    client(otherCert, otherKey),
		"plaintext":                      kilnv1.NewBuildServiceClient(f.dial(t)),
		"server certificate as a client": client(farmCA.serverCert, farmCA.serverKeyPEM),
	} {
		if err := list(c); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want the connection refused (Unavailable)", name, err)
		}
	}
	// A token is still needed over mutual TLS.
	_, err = client(goodCert, goodKey).ListBuilds(t.Context(), &kilnv1.ListBuildsRequest{})
	wantCode(t, "mTLS without a token", err, codes.Unauthenticated)

	if _, err := (TLSFlags{Cert: farmCA.serverCert}).Server(); err == nil {
		t.Error("--tls-cert without --tls-key accepted")
	}
	if _, err := (TLSFlags{ClientCA: farmCA.caFile}).Server(); err == nil {
		t.Error("--tls-client-ca without a certificate accepted")
	}
}
