package gateway

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/casgc"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
	"github.com/kilnbuild/kiln/services/logging/logtest"
	"github.com/kilnbuild/kiln/services/tenants"
)

// casHarness is a Gateway on a real in-process NATS server, served over
// gRPC on a loopback listener, with its CAS bookkeeping (runCAS) running.
type casHarness struct {
	g        *Gateway
	conn     *bus.Conn
	addr     string
	contexts kilnv1.ContextServiceClient
	builds   kilnv1.BuildServiceClient
}

func startCASGateway(t *testing.T, limits Limits) *casHarness {
	t.Helper()
	return startCASGatewayConfig(t, Config{Limits: limits})
}

// startCASGatewayConfig is startCASGateway with cfg (Conn and Logger are
// the harness's).
func startCASGatewayConfig(t *testing.T, cfg Config) *casHarness {
	t.Helper()
	ctx := t.Context()
	conn := bustest.Conn(t)
	logs := &logtest.Buffer{}
	cfg.Conn, cfg.Logger = conn, slog.New(slog.NewJSONHandler(logs, nil))
	g, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, cc := serveGateway(t, g, func(ctx context.Context) { _ = g.runCAS(ctx) })
	return &casHarness{g: g, conn: conn, addr: addr,
		contexts: kilnv1.NewContextServiceClient(cc), builds: kilnv1.NewBuildServiceClient(cc)}
}

func digestOf(data []byte) *kilnv1.Digest {
	sum := sha256.Sum256(data)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

// serveGateway serves g's gRPC API on a free loopback port, with
// background (when not nil) running beside it, until the test ends, and
// returns the address and a client connection to it.
func serveGateway(t *testing.T, g *Gateway, background func(context.Context)) (string, *grpc.ClientConn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := g.NewGRPCServer()
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	bgCtx, stopBg := context.WithCancel(context.Background())
	bgDone := make(chan struct{})
	go func() {
		defer close(bgDone)
		if background != nil {
			background(bgCtx)
		}
	}()
	t.Cleanup(func() { stopBg(); <-bgDone; gs.Stop(); <-served })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return lis.Addr().String(), cc
}

// storeDockerfile stores a tar build context holding only a Dockerfile
// with the text dockerfile in conn's CAS and returns its reference.
func storeDockerfile(t *testing.T, conn *bus.Conn, dockerfile string) *kilnv1.ContextRef {
	t.Helper()
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(tw, dockerfile); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	digest := digestOf(tarball.Bytes())
	blobs, err := cas.Open(t.Context(), conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := blobs.Put(t.Context(), digest.Hash, digest.SizeBytes, bytes.NewReader(tarball.Bytes())); err != nil {
		t.Fatal(err)
	}
	return &kilnv1.ContextRef{Digest: digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}
}

// upload sends blobs on one UploadBlobs stream.
func (h *casHarness) upload(ctx context.Context, blobs ...[]byte) error {
	stream, err := h.contexts.UploadBlobs(ctx)
	if err != nil {
		return err
	}
	for _, b := range blobs {
		if err := stream.Send(&kilnv1.UploadBlobsRequest{Digest: digestOf(b), Data: b, FinishWrite: true}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

// manifestOf is the manifest of files (path → content).
func manifestOf(files map[string][]byte) *kilnv1.ContextManifest {
	m := &kilnv1.ContextManifest{}
	for p, data := range files {
		m.Entries = append(m.Entries, &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: int64(len(data)), Digest: digestOf(data)})
	}
	sort.Slice(m.Entries, func(i, j int) bool { return m.Entries[i].Path < m.Entries[j].Path })
	return m
}

// sendContext puts the manifest of files, uploads what the farm lacks and
// returns the context's ref and the digests that were missing.
func (h *casHarness) sendContext(t *testing.T, files map[string][]byte) (*kilnv1.ContextRef, []string) {
	t.Helper()
	resp, err := h.contexts.PutManifest(t.Context(), &kilnv1.PutManifestRequest{Manifest: manifestOf(files)})
	if err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	byDigest := map[string][]byte{}
	for _, data := range files {
		byDigest[digestOf(data).Hash] = data
	}
	var missing []string
	var send [][]byte
	for _, d := range resp.Missing {
		missing = append(missing, d.Hash)
		send = append(send, byDigest[d.Hash])
	}
	if len(send) > 0 {
		if err := h.upload(t.Context(), send...); err != nil {
			t.Fatalf("UploadBlobs: %v", err)
		}
	}
	return &kilnv1.ContextRef{Digest: resp.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}, missing
}

func (h *casHarness) startBuild(t *testing.T, ref *kilnv1.ContextRef, tag string) *kilnv1.Build {
	t.Helper()
	resp, err := h.builds.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Context: ref, Spec: &kilnv1.BuildSpec{Tags: []string{tag}}})
	if err != nil {
		t.Fatalf("StartBuild: %v", err)
	}
	return resp.Build
}

// TestCASQuotaOverQuotaIsRefusedBeforeStoring: a tenant whose upload or
// manifest would take it over its CAS quota gets ResourceExhausted naming
// its usage and quota, and nothing of the refused request is stored.
func TestCASQuotaOverQuotaIsRefusedBeforeStoring(t *testing.T) {
	limits := DefaultLimits
	limits.CAS.Quota = 1000 // the local tenant's
	h := startCASGateway(t, limits)
	ctx := t.Context()
	first := []byte(strings.Repeat("a", 700))
	if err := h.upload(ctx, first); err != nil {
		t.Fatalf("upload within the quota: %v", err)
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 700 {
		t.Fatalf("usage after a 700-byte upload = %d", used)
	}

	big := []byte(strings.Repeat("b", 400))
	err := h.upload(ctx, big)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), `tenant "default" stores 700 B of context blobs, quota 1.0 kB`) {
		t.Fatalf("upload over the quota = %v; want ResourceExhausted naming usage and quota", err)
	}
	if ok, _ := h.g.blobs.Has(ctx, digestOf(big).Hash, -1); ok {
		t.Fatal("a blob refused for the quota was stored")
	}

	// A manifest whose missing files would exceed the quota is refused
	// before the manifest itself is stored.
	m := manifestOf(map[string][]byte{"Dockerfile": []byte("FROM scratch\n"), "big": big})
	_, err = h.contexts.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: m})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "quota 1.0 kB") {
		t.Fatalf("PutManifest over the quota = %v; want ResourceExhausted", err)
	}
	data, _ := ctxmanifest.Marshal(m)
	if ok, _ := h.g.blobs.Has(ctx, digestOf(data).Hash, -1); ok {
		t.Fatal("a manifest refused for the quota was stored")
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 700 {
		t.Fatalf("usage after refusals = %d, want 700 (refusals charge nothing)", used)
	}

	// A blob the farm holds already costs nothing: re-sending it succeeds.
	if err := h.upload(ctx, first); err != nil {
		t.Fatalf("re-upload of a stored blob: %v", err)
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 700 {
		t.Fatalf("usage after re-sending a stored blob = %d, want 700", used)
	}
}

// TestCASQuotaTwoTenants: two tenants with their own tokens; team-a's
// cas_quota_bytes is full, so its upload is ResourceExhausted, while
// team-b uploads the same blob, puts a manifest and starts a build. The
// blob is then on the farm, so team-a may use it without being charged.
func TestCASQuotaTwoTenants(t *testing.T) {
	const tokA, tokB = "kiln_casquotateama000000000000000000000000000000", "kiln_casquotateamb000000000000000000000000000000"
	hashA, err := tenants.HashToken(tokA)
	if err != nil {
		t.Fatal(err)
	}
	hashB, err := tenants.HashToken(tokB)
	if err != nil {
		t.Fatal(err)
	}
	set, err := tenants.Parse([]byte("tenants:\n" +
		"  - name: team-a\n    tokens: ['" + hashA + "']\n    cas_quota_bytes: 1000\n" +
		"  - name: team-b\n    tokens: ['" + hashB + "']\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := startCASGatewayConfig(t, Config{Limits: DefaultLimits, Tenants: set})
	ctxA, ctxB := as(t.Context(), tokA), as(t.Context(), tokB)

	if err := h.upload(ctxA, []byte(strings.Repeat("a", 700))); err != nil {
		t.Fatalf("team-a within its quota: %v", err)
	}
	shared := []byte(strings.Repeat("s", 400))
	err = h.upload(ctxA, shared)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `tenant "team-a" stores 700 B of context blobs, quota 1.0 kB`) {
		t.Fatalf("team-a over its quota = %v; want ResourceExhausted naming usage and quota", err)
	}

	if err := h.upload(ctxB, shared); err != nil {
		t.Fatalf("team-b is refused because team-a is full: %v", err)
	}
	files := map[string][]byte{"Dockerfile": []byte("FROM scratch\nCOPY s /\n"), "s": shared}
	put, err := h.contexts.PutManifest(ctxB, &kilnv1.PutManifestRequest{Manifest: manifestOf(files)})
	if err != nil {
		t.Fatalf("team-b PutManifest: %v", err)
	}
	var send [][]byte
	for _, d := range put.Missing {
		if d.Hash == digestOf(files["Dockerfile"]).Hash {
			send = append(send, files["Dockerfile"])
		}
	}
	if len(put.Missing) != 1 || len(send) != 1 {
		t.Fatalf("team-b missing = %v; want only the Dockerfile", put.Missing)
	}
	if err := h.upload(ctxB, send...); err != nil {
		t.Fatal(err)
	}
	ref := &kilnv1.ContextRef{Digest: put.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
	if _, err := h.builds.StartBuild(ctxB, &kilnv1.StartBuildRequest{Context: ref, Spec: &kilnv1.BuildSpec{}}); err != nil {
		t.Fatalf("team-b StartBuild: %v", err)
	}

	// The shared blob is on the farm now: team-a's upload of it is free.
	if err := h.upload(ctxA, shared); err != nil {
		t.Fatalf("team-a re-sending a blob the farm holds: %v", err)
	}
	ua, _ := h.g.usage.Get(t.Context(), "team-a")
	ub, _ := h.g.usage.Get(t.Context(), "team-b")
	if ua != 700 || ub != 400+int64(len(files["Dockerfile"]))+put.Digest.SizeBytes {
		t.Fatalf("usage team-a %d, team-b %d", ua, ub)
	}
}

// TestCASQuotaIsPerTenant: the accounting UploadBlobs and PutManifest call
// with the caller's tenant: one tenant over its quota is refused while
// another tenant's charges still succeed, and a credit (the collector
// deleting the tenant's blobs) lets the first store again.
func TestCASQuotaIsPerTenant(t *testing.T) {
	hashA, err := tenants.HashToken("kiln_casquotapertenanta0000000000000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	hashB, err := tenants.HashToken("kiln_casquotapertenantb0000000000000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	set, err := tenants.Parse([]byte("tenants:\n" +
		"  - name: team-a\n    tokens: ['" + hashA + "']\n    cas_quota_bytes: 1048576\n" +
		"  - name: team-b\n    tokens: ['" + hashB + "']\n    cas_quota_bytes: 2097152\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := startCASGatewayConfig(t, Config{Limits: DefaultLimits, Tenants: set})
	ctx := t.Context()
	if err := h.g.charge(ctx, "team-a", 900<<10); err != nil {
		t.Fatal(err)
	}
	err = h.g.charge(ctx, "team-a", 200<<10)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `tenant "team-a" stores 921.6 kB of context blobs, quota 1.0 MB`) {
		t.Fatalf("team-a over its quota: %v", err)
	}
	if err := h.g.checkQuota(ctx, "team-a", 200<<10); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("checkQuota for team-a over its quota = %v", err)
	}
	for range 2 {
		if err := h.g.charge(ctx, "team-b", 900<<10); err != nil {
			t.Fatalf("team-b is refused because team-a is full: %v", err)
		}
	}
	if err := h.g.usage.Credit(ctx, "team-a", 500<<10); err != nil {
		t.Fatal(err)
	}
	if err := h.g.charge(ctx, "team-a", 200<<10); err != nil {
		t.Fatalf("team-a after a credit: %v", err)
	}
	all, err := h.g.usage.All(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all["team-a"] != 600<<10 || all["team-b"] != 1800<<10 {
		t.Fatalf("usage = %v", all)
	}
	// A tenant without a quota of its own gets --cas-quota (10 GiB).
	if q := h.g.casQuota("team-c"); q != DefaultCASLimits.Quota {
		t.Fatalf("default quota = %d", q)
	}
}

// TestCASGarbageCollection: the collector keeps what a queued build
// needs and what is fresh, deletes a blob unreferenced on two scans a
// grace period apart (crediting its owner), and a rebuild after that
// re-uploads what was deleted and is queued: no gateway vouches for a
// deleted blob.
func TestCASGarbageCollection(t *testing.T) {
	limits := DefaultLimits
	limits.CAS.Interval = 0 // the test drives the collector
	h := startCASGateway(t, limits)
	ctx := t.Context()

	queuedRef, _ := h.sendContext(t, map[string][]byte{"Dockerfile": []byte("FROM scratch\nCOPY q /\n"), "q": []byte("queued")})
	h.startBuild(t, queuedRef, "app:queued")

	oldFiles := map[string][]byte{"Dockerfile": []byte("FROM scratch\nCOPY old /\n"), "old": []byte("old build's file")}
	oldRef, _ := h.sendContext(t, oldFiles)
	old := h.startBuild(t, oldRef, "app:old")
	if _, err := h.builds.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: old.Id}); err != nil {
		t.Fatal(err)
	}
	orphan := []byte("uploaded, never referenced")
	if err := h.upload(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	usageBefore, _ := h.g.usage.Get(ctx, defaultTenant)

	// The collector runs as another gateway would: its own Store and clock.
	blobs, err := cas.Open(ctx, h.conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c := casgc.New(casgc.Config{
		Blobs: blobs, Usage: h.g.usage, Builds: h.g.builds, NC: h.conn.NC,
		Retention: 24 * time.Hour, Grace: time.Hour, Now: func() time.Time { return now },
		Logger: slog.New(slog.DiscardHandler),
	})
	res, err := c.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Candidates != 0 || res.Deleted != 0 {
		t.Fatalf("sweep of fresh blobs = %+v; want nothing unreferenced (all stored within the grace)", res)
	}

	now = now.Add(26 * time.Hour) // past the grace and the old build's retention
	if res, err = c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if res.Candidates != 4 || res.Deleted != 0 { // orphan, old manifest, old Dockerfile, "old"
		t.Fatalf("first stale sweep = %+v; want 4 candidates, nothing deleted yet", res)
	}
	fresh := []byte("uploaded between the scans")
	if err := h.upload(ctx, fresh); err != nil {
		t.Fatal(err)
	}

	now = now.Add(time.Hour)
	if res, err = c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 4 || res.Candidates != 1 {
		t.Fatalf("second stale sweep = %+v; want 4 deleted and the fresh blob a new candidate", res)
	}
	check, err := cas.Open(ctx, h.conn.JS) // no memory: asks NATS
	if err != nil {
		t.Fatal(err)
	}
	has := func(d string) bool {
		ok, err := check.Has(ctx, d, -1)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if has(digestOf(orphan).Hash) || has(oldRef.Digest.Hash) || has(digestOf(oldFiles["old"]).Hash) {
		t.Fatal("an unreferenced blob survived two scans a grace apart")
	}
	if !has(queuedRef.Digest.Hash) || !has(digestOf([]byte("queued")).Hash) {
		t.Fatal("the collector deleted what a queued build needs")
	}
	if !has(digestOf(fresh).Hash) {
		t.Fatal("the collector deleted a blob first seen one scan ago")
	}
	deleted := int64(len(orphan)) + oldRef.Digest.SizeBytes + int64(len(oldFiles["old"])) + int64(len(oldFiles["Dockerfile"]))
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != usageBefore+int64(len(fresh))-deleted {
		t.Fatalf("usage after deleting %d bytes = %d, was %d", deleted, used, usageBefore)
	}

	// The rebuild: the gateway heard the deletions, so PutManifest says
	// the files are missing again (the announcement is asynchronous: wait
	// for it with the test's deadline), they are re-uploaded, and the
	// build is queued.
	for {
		resp, err := h.contexts.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: manifestOf(oldFiles)})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Missing) == 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the gateway still vouches for deleted blobs: missing = %v", resp.Missing)
		case <-time.After(10 * time.Millisecond):
		}
	}
	ref, missing := h.sendContext(t, oldFiles) // uploads the two files
	if len(missing) != 2 || ref.Digest.Hash != oldRef.Digest.Hash {
		t.Fatalf("rebuild: missing = %v, manifest %s (was %s)", missing, ref.Digest.Hash, oldRef.Digest.Hash)
	}
	h.startBuild(t, ref, "app:old")
	if !has(oldRef.Digest.Hash) || !has(digestOf(oldFiles["old"]).Hash) {
		t.Fatal("the rebuild's context is not stored again")
	}
}
