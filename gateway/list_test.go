package gateway

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// changeRecord rewrites build id's record in KV with change applied, as
// the scheduler would.
func changeRecord(t *testing.T, conn *bus.Conn, id string, change func(*kilnv1.Build)) {
	t.Helper()
	kv, err := conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	b := &kilnv1.Build{}
	if err := bus.Decode(e.Value(), b); err != nil {
		t.Fatal(err)
	}
	change(b)
	data, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(t.Context(), id, data, e.Revision()); err != nil {
		t.Fatal(err)
	}
}

func ids(builds []*kilnv1.Build) []string {
	out := make([]string, len(builds))
	for i, b := range builds {
		out[i] = b.Id
	}
	return out
}

// TestListBuildsFiltersAndPages: each filter keeps what it names, for the
// caller's tenant only, newest first; paging through any filtered listing
// with any page size yields the same builds once each; a page token that
// is garbage, tampered with or sent with other filters is InvalidArgument;
// another tenant's builds are PermissionDenied but for an admin.
func TestListBuildsFiltersAndPages(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	ctx := t.Context()
	n := 0
	start := func(token, repo string, tags ...string) *kilnv1.Build {
		t.Helper()
		n++ // identical builds in flight would merge
		resp, err := c.StartBuild(as(ctx, token), &kilnv1.StartBuildRequest{
			Spec: &kilnv1.BuildSpec{Tags: tags, Repository: repo, Labels: map[string]string{"n": strconv.Itoa(n)}}, Context: f.ref,
		})
		if err != nil {
			t.Fatalf("StartBuild: %v", err)
		}
		return resp.Build
	}
	const (
		repoApp = "git@example.com:team-a/app.git"
		repoLib = "git@example.com:team-a/lib.git"
		tagApp1 = "registry.example.com/team-a/app:1"
		tagApp2 = "registry.example.com/team-a/app:2"
		tagLib  = "registry.example.com/team-a/lib:1"
	)
	// Oldest first: a0 … a5 for team-a, one for team-b in the middle.
	a0 := start(tokenA, repoApp, tagApp1)
	a1 := start(tokenA, repoApp, tagApp2)
	b0 := start(tokenB, repoApp, "registry.example.com/team-b/app:1")
	a2 := start(tokenA, repoLib, tagLib)
	a3 := start(tokenA2, repoApp, tagApp1, tagApp2)
	a4 := start(tokenA, repoLib, tagLib)
	a5 := start(tokenA, repoApp, tagApp1)
	at := func(st kilnv1.BuildState, agent string, lost ...string) func(*kilnv1.Build) {
		return func(b *kilnv1.Build) {
			b.State, b.Agent, b.LostAgents = st, agent, lost
			for i, a := range append(slices.Clone(lost), agent) {
				if a != "" {
					b.Attempts = append(b.Attempts, &kilnv1.BuildAttempt{Attempt: uint32(i + 1), Agent: a})
				}
			}
		}
	}
	changeRecord(t, f.conn, a0.Id, at(kilnv1.BuildState_BUILD_STATE_SUCCEEDED, "agent-1"))
	changeRecord(t, f.conn, a1.Id, at(kilnv1.BuildState_BUILD_STATE_FAILED, "agent-2", "agent-1"))
	changeRecord(t, f.conn, a2.Id, at(kilnv1.BuildState_BUILD_STATE_RUNNING, "agent-2"))
	changeRecord(t, f.conn, a3.Id, at(kilnv1.BuildState_BUILD_STATE_CANCELLED, ""))
	changeRecord(t, f.conn, a4.Id, at(kilnv1.BuildState_BUILD_STATE_RUNNING, "agent-1"))
	changeRecord(t, f.conn, b0.Id, at(kilnv1.BuildState_BUILD_STATE_RUNNING, "agent-1"))
	// a5 stays QUEUED.

	running := kilnv1.BuildState_BUILD_STATE_RUNNING
	for _, tc := range []struct {
		name  string
		token string
		req   *kilnv1.ListBuildsRequest
		want  []*kilnv1.Build
	}{
		{"everything, newest first", tokenA, &kilnv1.ListBuildsRequest{}, []*kilnv1.Build{a5, a4, a3, a2, a1, a0}},
		{"another token of the same tenant", tokenA2, &kilnv1.ListBuildsRequest{}, []*kilnv1.Build{a5, a4, a3, a2, a1, a0}},
		{"one state", tokenA, &kilnv1.ListBuildsRequest{States: []kilnv1.BuildState{running}}, []*kilnv1.Build{a4, a2}},
		{"two states", tokenA, &kilnv1.ListBuildsRequest{States: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_QUEUED, kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}, []*kilnv1.Build{a5, a0}},
		{"repository", tokenA, &kilnv1.ListBuildsRequest{Repository: repoLib}, []*kilnv1.Build{a4, a2}},
		{"tag among several", tokenA, &kilnv1.ListBuildsRequest{Tag: tagApp2}, []*kilnv1.Build{a3, a1}},
		{"agent at any attempt", tokenA, &kilnv1.ListBuildsRequest{Agent: "agent-1"}, []*kilnv1.Build{a4, a1, a0}},
		{"since", tokenA, &kilnv1.ListBuildsRequest{Since: a3.CreatedAt}, []*kilnv1.Build{a5, a4, a3}},
		{"filters together", tokenA, &kilnv1.ListBuildsRequest{Repository: repoApp, Tag: tagApp1, Since: a1.CreatedAt}, []*kilnv1.Build{a5, a3}},
		{"nothing matches", tokenA, &kilnv1.ListBuildsRequest{Repository: "nope"}, nil},
		{"other tenant's own view", tokenB, &kilnv1.ListBuildsRequest{States: []kilnv1.BuildState{running}}, []*kilnv1.Build{b0}},
		{"own tenant named", tokenA, &kilnv1.ListBuildsRequest{Tenant: "team-a", Agent: "agent-2"}, []*kilnv1.Build{a2, a1}},
		{"admin lists a tenant", tokenAdmin, &kilnv1.ListBuildsRequest{Tenant: "team-a", States: []kilnv1.BuildState{running}}, []*kilnv1.Build{a4, a2}},
		{"admin's own builds", tokenAdmin, &kilnv1.ListBuildsRequest{}, nil},
	} {
		// Newest first is by id, which sorts by the millisecond of creation
		// (builds created within one are in an arbitrary, stable order).
		slices.SortFunc(tc.want, func(a, b *kilnv1.Build) int { return strings.Compare(b.Id, a.Id) })
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.ListBuilds(as(ctx, tc.token), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := ids(resp.Builds), ids(tc.want); !slices.Equal(got, want) || resp.NextPageToken != "" {
				t.Fatalf("got %v (next %q), want %v", got, resp.NextPageToken, want)
			}
			// Paged, every page size gives the same builds, once each.
			for size := int32(1); size <= int32(len(tc.want)); size++ {
				var got []string
				req := proto.CloneOf(tc.req)
				req.PageSize = size
				for pages := 0; ; pages++ {
					if pages > len(tc.want) {
						t.Fatalf("page size %d: more pages than builds", size)
					}
					resp, err := c.ListBuilds(as(ctx, tc.token), req)
					if err != nil {
						t.Fatalf("page size %d, page %d: %v", size, pages, err)
					}
					if len(resp.Builds) > int(size) {
						t.Fatalf("page size %d: a page of %d", size, len(resp.Builds))
					}
					got = append(got, ids(resp.Builds)...)
					if resp.NextPageToken == "" {
						break
					}
					req.PageToken = resp.NextPageToken
				}
				if want := ids(tc.want); !slices.Equal(got, want) {
					t.Fatalf("page size %d: paged through %v, want %v", size, got, want)
				}
			}
		})
	}

	// Page tokens: only the farm's own, for the same filters.
	first, err := c.ListBuilds(as(ctx, tokenA), &kilnv1.ListBuildsRequest{PageSize: 2, Repository: repoApp})
	if err != nil || first.NextPageToken == "" {
		t.Fatalf("first page: %v, %v", first, err)
	}
	tampered := []byte(first.NextPageToken)
	tampered[len(tampered)/2] ^= 1
	for name, req := range map[string]*kilnv1.ListBuildsRequest{
		"garbage":           {PageToken: "not a token"},
		"tampered":          {PageToken: string(tampered), Repository: repoApp},
		"other filters":     {PageToken: first.NextPageToken, Repository: repoLib},
		"filters dropped":   {PageToken: first.NextPageToken},
		"a bare build id":   {PageToken: a3.Id, Repository: repoApp},
		"negative size":     {PageSize: -1},
		"unknown state":     {States: []kilnv1.BuildState{42}},
		"unspecified state": {States: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_UNSPECIFIED}},
		"invalid since":     {Since: &timestamppb.Timestamp{Seconds: -1 << 62}},
	} {
		_, err := c.ListBuilds(as(ctx, tokenA), req)
		wantCode(t, "ListBuilds with "+name, err, codes.InvalidArgument)
	}
	// The same filters with another page size follow the token.
	next, err := c.ListBuilds(as(ctx, tokenA), &kilnv1.ListBuildsRequest{PageSize: 10, PageToken: first.NextPageToken, Repository: repoApp})
	all, err := c.ListBuilds(as(ctx, tokenA), &kilnv1.ListBuildsRequest{Repository: repoApp})
	if err != nil || len(all.Builds) != 4 {
		t.Fatalf("all of repoApp: %v, %v", ids(all.GetBuilds()), err)
	}
	if err != nil || !slices.Equal(ids(next.Builds), ids(all.Builds[2:])) {
		t.Fatalf("second page: %v, %v; want %v", ids(next.GetBuilds()), err, ids(all.Builds[2:]))
	}

	// Another tenant: refused unless admin.
	_, err = c.ListBuilds(as(ctx, tokenA), &kilnv1.ListBuildsRequest{Tenant: "team-b"})
	wantCode(t, "team-a listing team-b's builds", err, codes.PermissionDenied)
	resp, err := c.ListBuilds(as(ctx, tokenAdmin), &kilnv1.ListBuildsRequest{Tenant: "team-b"})
	if err != nil || !slices.Equal(ids(resp.Builds), []string{b0.Id}) {
		t.Fatalf("admin listing team-b: %v, %v", ids(resp.GetBuilds()), err)
	}
}
