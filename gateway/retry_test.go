package gateway

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// TestRetryBuildWithSealedSecrets: a retry is a new QUEUED build with the
// original's spec, sealed values and seal nonce included, and context; the
// agent's key opens its secrets with the new record's binding (tenant,
// nonce, id), exactly as the agent does; the sealed bytes never reach the
// client. The idempotency key returns the same retry, and belongs to one
// kind of request: a StartBuild's key is not a RetryBuild's. A build not
// finished yet, and an unknown one, are refused.
func TestRetryBuildWithSealedSecrets(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	ctx := t.Context()
	nonce := newNonce(t)
	orig := g.start(t, &kilnv1.StartBuildRequest{
		Spec: &kilnv1.BuildSpec{
			Tags: []string{"127.0.0.1:5000/retry/app:1"}, SealNonce: nonce, Builder: kilnv1.Builder_BUILDER_BUILDKIT,
			Secrets:      []*kilnv1.SealedSecret{sealFor(t, k, nonce, "npm", "npm-token-0123")},
			RegistryAuth: []*kilnv1.SealedSecret{sealFor(t, k, nonce, "ghcr.io", `{"username":"u","password":"p"}`)},
			BuildArgs:    map[string]string{"V": "1"},
		},
		IdempotencyKey: "job-1",
	})
	_, err := g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: orig.Id})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "only a finished build can be retried") {
		t.Fatalf("retry of a queued build: %v, want FailedPrecondition", err)
	}
	if _, err := g.client.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: orig.Id}); err != nil {
		t.Fatal(err)
	}

	resp, err := g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: orig.Id, IdempotencyKey: "retry-1"})
	if err != nil {
		t.Fatalf("RetryBuild: %v", err)
	}
	retry := resp.Build
	if retry.Id == orig.Id || retry.State != kilnv1.BuildState_BUILD_STATE_QUEUED || retry.RetryOf != orig.Id {
		t.Fatalf("retry = %s %s retry_of %q, want a new QUEUED build retrying %s", retry.Id, retry.State, retry.RetryOf, orig.Id)
	}
	for _, s := range append(retry.Spec.Secrets, retry.Spec.RegistryAuth...) {
		if len(s.Sealed) != 0 {
			t.Fatalf("the client got the sealed bytes of %q", s.Id)
		}
	}
	was, rec := record(t, g, orig.Id), record(t, g, retry.Id)
	if !bytes.Equal(rec.Spec.SealNonce, nonce) || rec.Spec.Tags[0] != was.Spec.Tags[0] || rec.Spec.BuildArgs["V"] != "1" ||
		rec.Context.Digest.Hash != was.Context.Digest.Hash || rec.Tenant != was.Tenant {
		t.Fatalf("retry's record %v differs from the original's %v", rec, was)
	}
	for _, tc := range []struct {
		list []*kilnv1.SealedSecret
		want string
	}{{rec.Spec.Secrets, "npm-token-0123"}, {rec.Spec.RegistryAuth, `{"username":"u","password":"p"}`}} {
		s := tc.list[0]
		v, err := k.Open(seal.Binding{Tenant: rec.Tenant, Nonce: rec.Spec.SealNonce, ID: s.Id}, s.Sealed)
		if err != nil || string(v) != tc.want {
			t.Fatalf("the agent opens %q of the retry: %q, %v", s.Id, v, err)
		}
	}

	// The same key: the same retry, nothing new stored.
	before := g.countBuilds(t)
	again, err := g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: orig.Id, IdempotencyKey: "retry-1"})
	if err != nil || again.Build.Id != retry.Id {
		t.Fatalf("retry sent again: %v, %v; want %s", again.GetBuild().GetId(), err, retry.Id)
	}
	if n := g.countBuilds(t); n != before {
		t.Fatalf("%d builds after the repeated retry, want %d", n, before)
	}
	// A key is one request's: StartBuild's is not RetryBuild's, nor back.
	_, err = g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: orig.Id, IdempotencyKey: "job-1"})
	wantCode(t, "RetryBuild with the StartBuild's key", err, codes.FailedPrecondition)
	_, err = g.client.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"127.0.0.1:5000/retry/app:2"}}, Context: g.ref, IdempotencyKey: "retry-1"})
	wantCode(t, "StartBuild with the RetryBuild's key", err, codes.FailedPrecondition)
	// Without a key, another build each time (with secrets, never merged).
	other, err := g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: orig.Id})
	if err != nil || other.Build.Id == retry.Id || other.Build.Id == orig.Id {
		t.Fatalf("retry without a key: %v, %v", other.GetBuild().GetId(), err)
	}

	for name, id := range map[string]string{"unknown build": buildstore.NewID(orig.CreatedAt.AsTime()), "malformed id": "../etc"} {
		_, err := g.client.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: id})
		wantCode(t, "RetryBuild of an "+name, err, codes.NotFound)
	}
}

// TestRetryBuildTenants: only the build's own tenant may retry it (any of
// its tokens); for anyone else, an admin included, it is NotFound, as for
// GetBuild, and nothing is stored. The retry carries today's policy.
func TestRetryBuildTenants(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := t.Context()
	a := f.start(t, c, tokenA, "registry.example.com/team-a/app:1")
	if _, err := c.CancelBuild(as(ctx, tokenA), &kilnv1.CancelBuildRequest{BuildId: a.Id}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{tokenB, tokenAdmin} {
		_, err := c.RetryBuild(as(ctx, tok), &kilnv1.RetryBuildRequest{BuildId: a.Id})
		wantCode(t, "another tenant's RetryBuild", err, codes.NotFound)
		l, err := c.ListBuilds(as(ctx, tok), &kilnv1.ListBuildsRequest{})
		if err != nil || len(l.Builds) != 0 {
			t.Fatalf("builds of the refused tenant: %v, %v", ids(l.GetBuilds()), err)
		}
	}
	resp, err := c.RetryBuild(as(ctx, tokenA2), &kilnv1.RetryBuildRequest{BuildId: a.Id})
	if err != nil {
		t.Fatalf("team-a retries its build with its second token: %v", err)
	}
	r := resp.Build
	if r.Tenant != "team-a" || r.RetryOf != a.Id || !r.GetPolicy().GetAllowRemoteAdd() {
		t.Fatalf("retry = tenant %q retry_of %q policy %v", r.Tenant, r.RetryOf, r.GetPolicy())
	}
	_, err = c.GetBuild(as(ctx, tokenB), &kilnv1.GetBuildRequest{BuildId: r.Id})
	wantCode(t, "team-b's GetBuild of team-a's retry", err, codes.NotFound)
	l, err := c.ListBuilds(as(ctx, tokenA), &kilnv1.ListBuildsRequest{})
	if err != nil || len(l.Builds) != 2 || !slices.Contains(ids(l.Builds), r.Id) || !slices.Contains(ids(l.Builds), a.Id) {
		t.Fatalf("team-a's builds: %v, %v; want the build and its retry", ids(l.GetBuilds()), err)
	}
}

// TestRetryBuildContextGone: once the farm no longer holds the context
// (the collector deleted a blob of it and said so), a retry is
// FailedPrecondition saying so, and nothing is stored.
func TestRetryBuildContextGone(t *testing.T) {
	h := startCASGateway(t, Limits{})
	ctx := t.Context()
	dockerfile := []byte("FROM scratch\nCOPY a /a\n")
	ref, _ := h.sendContext(t, map[string][]byte{"Dockerfile": dockerfile, "a": []byte("retry-context-gone")})
	b := h.startBuild(t, ref, "127.0.0.1:5000/retry/gone:1")
	if _, err := h.builds.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: b.Id}); err != nil {
		t.Fatal(err)
	}
	// While the context is there, a retry works.
	if _, err := h.builds.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: b.Id}); err != nil {
		t.Fatalf("retry with the context stored: %v", err)
	}
	// What the collector and the gateway's runCAS do for a deleted blob.
	gone := digestOf([]byte("retry-context-gone")).Hash
	if err := h.g.blobs.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	h.g.blobs.Forget(gone)
	h.g.checked.Purge()
	l, err := h.builds.ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.builds.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: b.Id})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "its context is no longer stored") {
		t.Fatalf("retry without the context: %v, want FailedPrecondition", err)
	}
	after, err := h.builds.ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
	if err != nil || len(after.Builds) != len(l.Builds) {
		t.Fatalf("%d builds after the refused retry, want %d (%v)", len(after.GetBuilds()), len(l.Builds), err)
	}
}
