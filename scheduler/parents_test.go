package scheduler

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// announce writes agent's heartbeat on its own connection, building
// platforms natively.
func announce(t *testing.T, conn *bus.Conn, agent string, platforms ...string) {
	t.Helper()
	kv, err := conn.JS.KeyValue(t.Context(), bus.BucketAgents)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(&kilnv1.Agent{Name: agent, State: kilnv1.AgentState_AGENT_STATE_READY, Slots: 2,
		LastSeen: timestamppb.Now(), Platforms: platforms})
	if _, err := kv.Put(t.Context(), agent, data); err != nil {
		t.Fatal(err)
	}
}

// submitParent queues a two-platform build as the gateway does.
func (rf *reportFarm) submitParent(t *testing.T) *kilnv1.Build {
	t.Helper()
	b := &kilnv1.Build{Id: buildstore.NewID(time.Now()), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED, CreatedAt: timestamppb.Now(),
		Spec: &kilnv1.BuildSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Push: true, Tags: []string{"127.0.0.1:5000/app:1"}}}
	rev, err := rf.store.Create(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id, Build: b, Revision: rev})
	if _, err := rf.gw.JS.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	return b
}

// buildChild runs the child c pulled on client to success, as having
// pushed its tag with digest.
func buildChild(t *testing.T, c *agentproto.Client, kid *kilnv1.Build, digest string) {
	t.Helper()
	at, _, err := c.Start(t.Context(), kid, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	res := &kilnv1.BuildResult{Steps: 3, CachedSteps: 1, Pushed: []*kilnv1.PushedImage{{Tag: kid.Spec.Tags[0], Digest: digest, Size: 500}}}
	if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, res, ""); err != nil {
		t.Fatal(err)
	}
}

func (rf *reportFarm) waitFor(t *testing.T, id, what string, cond func(*kilnv1.Build) bool) *kilnv1.Build {
	t.Helper()
	var b *kilnv1.Build
	waitUntil(t, what, func() bool {
		var err error
		b, _, err = rf.store.Get(t.Context(), id)
		return err == nil && cond(b)
	})
	return b
}

// The scheduler holds no tenant's registry credentials: once every child
// of a multi-platform build has pushed, it queues the parent, with the
// children's platforms and results, for an agent to write the image
// index; that agent's fenced result is the parent's.
func TestParentIsQueuedForAnAgentToWriteItsIndex(t *testing.T) {
	rf := newReportFarm(t)
	announce(t, rf.a, "agent-a", "linux/amd64")
	announce(t, rf.b, "agent-b", "linux/arm64")
	ca, _ := agentproto.New(rf.a.NC, "agent-a")
	cb, _ := agentproto.New(rf.b.NC, "agent-b")
	parent := rf.submitParent(t)

	// Each agent gets the child of its platform.
	amd, arm := pullOne(t, ca), pullOne(t, cb)
	if platformOf(amd) != "linux/amd64" || platformOf(arm) != "linux/arm64" || amd.ParentId != parent.Id || arm.ParentId != parent.Id {
		t.Fatalf("agent-a got %s (%s, parent %s), agent-b got %s (%s, parent %s)", amd.Id, platformOf(amd), amd.ParentId, arm.Id, platformOf(arm), arm.ParentId)
	}
	buildChild(t, ca, amd, "sha256:"+strings.Repeat("a", 64))
	if p := rf.waitFor(t, parent.Id, "one child's end noted", func(b *kilnv1.Build) bool { return true }); indexing(p) {
		t.Fatalf("parent queued for its index with one child still running: %v", p)
	}
	buildChild(t, cb, arm, "sha256:"+strings.Repeat("b", 64))

	// Then the parent itself: to any agent (agent-b builds no amd64).
	idx := pullOne(t, cb)
	if idx.Id != parent.Id || idx.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED || idx.Agent != "agent-b" {
		t.Fatalf("agent-b pulled %s %s on %q, want the parent %s assigned to it", idx.Id, idx.State, idx.Agent, parent.Id)
	}
	var got []string
	for _, c := range idx.ChildResults {
		got = append(got, c.Platform+"="+c.BuildId+"@"+c.GetResult().GetPushed()[0].GetDigest()[:8])
	}
	want := []string{"linux/amd64=" + amd.Id + "@sha256:a", "linux/arm64=" + arm.Id + "@sha256:b"}
	if !slices.Equal(got, want) {
		t.Fatalf("child results %v, want %v", got, want)
	}

	// Handed back (its agent stopped): queued again through the intake,
	// not split again.
	at, _, err := cb.Start(t.Context(), idx, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if err := at.HandBack(t.Context(), "agent-b stopped"); err != nil {
		t.Fatal(err)
	}
	idx = pullOne(t, ca)
	if idx.Id != parent.Id || idx.Attempt != 2 || len(idx.Children) != 2 || idx.Children[0] != amd.Id {
		t.Fatalf("agent-a pulled %s attempt %d children %v, want the parent %s at attempt 2 with its children", idx.Id, idx.Attempt, idx.Children, parent.Id)
	}
	at, _, err = ca.Start(t.Context(), idx, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	index := "sha256:" + strings.Repeat("c", 64)
	res := &kilnv1.BuildResult{ImageId: index, Pushed: []*kilnv1.PushedImage{{Tag: "127.0.0.1:5000/app:1", Digest: index, Size: 700}},
		Descriptor_: &kilnv1.ImageDescriptor{MediaType: "application/vnd.oci.image.index.v1+json", Digest: index, Size: 700}}
	if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, res, ""); err != nil {
		t.Fatal(err)
	}
	p := rf.waitFor(t, parent.Id, "the parent's end", func(b *kilnv1.Build) bool { return buildstore.Terminal(b.State) })
	if p.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || p.GetResult().GetImageId() != index || p.Agent != "agent-a" {
		t.Fatalf("parent %s on %q with image %q (%s), want succeeded on agent-a with the index %s", p.State, p.Agent, p.GetResult().GetImageId(), p.Error, index)
	}
	for _, id := range []string{amd.Id, arm.Id} { // not built again
		if k := rf.waitFor(t, id, "child", func(*kilnv1.Build) bool { return true }); k.Attempt != 1 {
			t.Errorf("child %s ran %d attempts, want 1", id, k.Attempt)
		}
	}
}

// A parent whose cancel is asked for while its last child finishes is
// cancelled, never queued for its index.
func TestParentCancelledAsItsChildrenEndIsNotQueued(t *testing.T) {
	rf := newReportFarm(t)
	announce(t, rf.a, "agent-a", "linux/amd64", "linux/arm64")
	ca, _ := agentproto.New(rf.a.NC, "agent-a")
	parent := rf.submitParent(t)
	k1, k2 := pullOne(t, ca), pullOne(t, ca)
	at2, _, err := ca.Start(t.Context(), k2, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	buildChild(t, ca, k1, "sha256:"+strings.Repeat("a", 64))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, _, err := rf.store.Cancel(ctx, parent.Id, buildstore.Cancellation{Error: "cancelled by t"}); err != nil {
		t.Fatal(err)
	}
	// k2's agent did not hear its cancel in time: it succeeds.
	res := &kilnv1.BuildResult{Pushed: []*kilnv1.PushedImage{{Tag: k2.Spec.Tags[0], Digest: "sha256:" + strings.Repeat("b", 64)}}}
	if _, err := at2.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, res, ""); err != nil {
		t.Fatal(err)
	}
	p := rf.waitFor(t, parent.Id, "the parent's end", func(b *kilnv1.Build) bool { return buildstore.Terminal(b.State) })
	if p.State != kilnv1.BuildState_BUILD_STATE_CANCELLED || len(p.ChildResults) != 0 {
		t.Fatalf("parent %s with %d child results, want cancelled with none", p.State, len(p.ChildResults))
	}
}

// A new leader finds a parent queued for its index (its children's
// results recorded) and queues it as a build, not split again.
func TestRecoversAParentQueuedForItsIndex(t *testing.T) {
	id := buildstore.NewID(time.Now())
	kids := []string{buildstore.NewID(time.Now()), buildstore.NewID(time.Now())}
	f := newFixture(t, func(f *fixture) {
		p := &kilnv1.Build{Id: id, Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED, Children: kids,
			Spec:         &kilnv1.BuildSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Push: true, Tags: []string{"r/app:1"}},
			ChildResults: []*kilnv1.ChildResult{{BuildId: kids[0], Platform: "linux/amd64"}, {BuildId: kids[1], Platform: "linux/arm64"}}}
		if _, err := f.store.Create(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	})
	var got []*kilnv1.Build
	waitUntil(t, "the parent assigned", func() bool {
		got = f.pull(t, "agent-x", time.Second)
		return len(got) == 1
	})
	if got[0].Id != id || got[0].State != kilnv1.BuildState_BUILD_STATE_ASSIGNED || !slices.Equal(got[0].Children, kids) || len(got[0].ChildResults) != 2 {
		t.Fatalf("pulled %s %s children %v with %d results, want the parent %s assigned with its 2 children's results", got[0].Id, got[0].State, got[0].Children, len(got[0].ChildResults), id)
	}
	for _, k := range kids { // no child created again
		if _, _, err := f.store.Get(t.Context(), k); !errors.Is(err, buildstore.ErrNotFound) {
			t.Errorf("child %s: %v, want not found (the parent was split again)", k, err)
		}
	}
}
