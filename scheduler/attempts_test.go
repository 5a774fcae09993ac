package scheduler

import (
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// TestAttemptHistory: each assignment is an attempt in the record, with
// its agent, when it was assigned, started and ended, and why it ended: a
// hand back with the agent's reason, a finish.
func TestAttemptHistory(t *testing.T) {
	rf := newReportFarm(t)
	ctx := t.Context()
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := agentproto.New(rf.b.NC, "agent-b")
	if err != nil {
		t.Fatal(err)
	}
	id := rf.submit(t)
	at, _, err := ca.Start(ctx, pullOne(t, ca), time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if err := at.HandBack(ctx, "engine unhealthy"); err != nil {
		t.Fatal(err)
	}
	at, _, err = cb.Start(ctx, pullOne(t, cb), time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{ImageId: "sha256:x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if b.Id != id || len(b.Attempts) != 2 {
		t.Fatalf("build %s attempts %v", b.Id, b.Attempts)
	}
	for i, want := range []struct{ agent, reason string }{
		{"agent-a", "handed back: engine unhealthy"},
		{"agent-b", buildstore.ReasonFinished},
	} {
		a := b.Attempts[i]
		if a.Attempt != uint32(i+1) || a.Agent != want.agent || a.Reason != want.reason || a.AssignedAt == nil || a.StartedAt == nil || a.EndedAt == nil ||
			a.StartedAt.AsTime().Before(a.AssignedAt.AsTime()) || a.EndedAt.AsTime().Before(a.StartedAt.AsTime()) {
			t.Fatalf("attempt %d = %v, want agent %s, assigned ≤ started ≤ ended, reason %q", i+1, a, want.agent, want.reason)
		}
	}
	if got, _, err := rf.store.Get(ctx, id); err != nil || len(got.Attempts) != 2 || got.Attempts[1].Reason != buildstore.ReasonFinished {
		t.Fatalf("stored record's attempts: %v, %v", got.GetAttempts(), err)
	}
}
