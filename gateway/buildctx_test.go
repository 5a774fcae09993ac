package gateway

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
	"github.com/kilnbuild/kiln/services/bus"
)

// TestStartBuildNamedContexts: named contexts the rules refuse are
// InvalidArgument; an uploaded named context must be in the CAS like the
// main one; a farm whose live agents cannot resolve named contexts refuses
// them with FailedPrecondition, and queues them once one can. Nothing is
// recorded for a refused build.
func TestStartBuildNamedContexts(t *testing.T) {
	f := startAuthFarm(t)
	c := startCacheGateway(t, f, "")
	ctx := as(t.Context(), tokenA)
	builder := kilnv1.Builder_BUILDER_UNSPECIFIED
	start := func(ncs ...*kilnv1.NamedContext) (*kilnv1.Build, error) {
		resp, err := c.StartBuild(ctx, &kilnv1.StartBuildRequest{
			Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", BuildContexts: ncs, Builder: builder}, Context: f.ref,
		})
		return resp.GetBuild(), err
	}
	named := putDirManifest(t, f)
	before, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	missing := &kilnv1.ContextRef{Digest: &kilnv1.Digest{Hash: "sha256:" + strings.Repeat("c", 64), SizeBytes: 10}, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
	for _, tc := range []struct {
		ncs  []*kilnv1.NamedContext
		code codes.Code
		want string
	}{
		{[]*kilnv1.NamedContext{{Name: "Base", Context: f.ref}}, codes.InvalidArgument, "lowercase"},
		{[]*kilnv1.NamedContext{{Name: "alpine:latest", Source: "docker-image://alpine"}}, codes.InvalidArgument, `send "alpine"`},
		{[]*kilnv1.NamedContext{{Name: "a", Source: "https://user:pw@h/r.git"}}, codes.InvalidArgument, "GIT_AUTH_TOKEN.h"},
		{[]*kilnv1.NamedContext{{Name: "a", Source: "target:b"}}, codes.InvalidArgument, "neither docker-image"},
		{[]*kilnv1.NamedContext{{Name: "base", Context: missing}}, codes.FailedPrecondition, "build context base: blob"},
		{[]*kilnv1.NamedContext{{Name: "base", Context: f.ref}}, codes.InvalidArgument, "must be uploaded as a manifest"},
		{[]*kilnv1.NamedContext{{Name: "base", Context: named}}, codes.FailedPrecondition, "kiln-agent --engine buildkit://"},
	} {
		_, err := start(tc.ncs...)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Fatalf("StartBuild with build contexts %v: %v, want %s with %q", tc.ncs, err, tc.code, tc.want)
		}
		if strings.Contains(err.Error(), "pw@") {
			t.Fatalf("the refusal shows the URL's password: %v", err)
		}
	}
	builder = kilnv1.Builder_BUILDER_CLASSIC
	if _, err := start(&kilnv1.NamedContext{Name: "base", Context: named}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "needs the BuildKit builder") {
		t.Fatalf("named contexts with the classic builder: %v, want InvalidArgument", err)
	}
	builder = kilnv1.Builder_BUILDER_UNSPECIFIED
	after, err := f.g.builds.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("refused builds were recorded: %d records, then %d", len(before), len(after))
	}

	kv, err := f.conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&kilnv1.Agent{Name: "buildkit-1", State: kilnv1.AgentState_AGENT_STATE_READY, EngineKind: "buildkit", Features: []string{namedctx.Feature}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "buildkit-1", data); err != nil {
		t.Fatal(err)
	}
	b, err := start(&kilnv1.NamedContext{Name: "base", Context: named}, &kilnv1.NamedContext{Name: "alpine", Source: "docker-image://127.0.0.1:5000/x:1"})
	if err != nil {
		t.Fatalf("named contexts with a BuildKit agent live: %v", err)
	}
	if got := b.GetSpec().GetBuildContexts(); len(got) != 2 || got[0].GetContext().GetDigest().GetHash() != named.GetDigest().GetHash() {
		t.Fatalf("recorded build contexts %v", got)
	}
}

// TestStartBuildGitContext: a Git URL context is queued without an
// uploaded context; one with credentials in the URL, beside an uploaded
// context, or with the classic builder is InvalidArgument.
func TestStartBuildGitContext(t *testing.T) {
	f := startAuthFarm(t)
	c := startCacheGateway(t, f, "")
	ctx := as(t.Context(), tokenA)
	for _, tc := range []struct {
		spec *kilnv1.BuildSpec
		ref  *kilnv1.ContextRef
		want string
	}{
		{&kilnv1.BuildSpec{GitContext: "https://x-access-token:tok@h/r.git"}, nil, "holds credentials"},
		{&kilnv1.BuildSpec{GitContext: "ssh://h/r.git"}, nil, "ssh Git URLs are not supported"},
		{&kilnv1.BuildSpec{GitContext: "https://h/r.git"}, f.ref, "takes no uploaded context"},
		{&kilnv1.BuildSpec{GitContext: "https://h/r.git", Builder: kilnv1.Builder_BUILDER_CLASSIC}, nil, "needs the BuildKit builder"},
		{&kilnv1.BuildSpec{}, nil, "build context is missing"},
	} {
		_, err := c.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: tc.spec, Context: tc.ref})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Fatalf("StartBuild(%v, context %v): %v, want InvalidArgument with %q", tc.spec, tc.ref, err, tc.want)
		}
		if strings.Contains(err.Error(), "tok@") {
			t.Fatalf("the refusal shows the token: %v", err)
		}
	}
	resp, err := c.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{GitContext: "https://h/r.git#main:app", Repository: "https://h/r.git//app"}})
	if err != nil {
		t.Fatalf("Git URL build: %v", err)
	}
	b := resp.GetBuild()
	if b.GetContext() != nil || b.GetSpec().GetGitContext() != "https://h/r.git#main:app" || b.GetAffinity().GetLineage() == "" {
		t.Fatalf("recorded context %v, git context %q, affinity %v", b.GetContext(), b.GetSpec().GetGitContext(), b.GetAffinity())
	}
}

// putDirManifest uploads, as team-a, a manifest context of one empty
// directory (no blobs to upload) and returns its reference.
func putDirManifest(t *testing.T, f *authFarm) *kilnv1.ContextRef {
	t.Helper()
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	m := &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{{Path: "d", Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: 0o755}}}
	resp, err := kilnv1.NewContextServiceClient(cc).PutManifest(as(t.Context(), tokenA), &kilnv1.PutManifestRequest{Manifest: m})
	if err != nil || len(resp.GetMissing()) != 0 {
		t.Fatalf("PutManifest: %v, missing %v", err, resp.GetMissing())
	}
	return &kilnv1.ContextRef{Digest: resp.GetDigest(), Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
}
