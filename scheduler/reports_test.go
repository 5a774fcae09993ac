package scheduler

import (
	"context"
	"errors"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// reportFarm is a real scheduler on a NATS server that enforces the
// roles' permissions, the gateway's connection (it creates builds and
// reads event logs) and two agents' connections.
type reportFarm struct {
	gw, a, b *bus.Conn
	store    *buildstore.Store
}

func newReportFarm(t *testing.T) *reportFarm {
	t.Helper()
	f := bustest.AuthFarm(t, "agent-a", "agent-b")
	rf := &reportFarm{gw: f.Conn(t, bus.RoleGateway, ""), a: f.Conn(t, bus.RoleAgent, "agent-a"), b: f.Conn(t, bus.RoleAgent, "agent-b")}
	var err error
	if rf.store, err = buildstore.Open(t.Context(), rf.gw.JS); err != nil {
		t.Fatal(err)
	}
	s, err := New(t.Context(), Config{Conn: f.Conn(t, bus.RoleScheduler, ""), Lease: time.Minute, SweepEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler Run: %v", err)
		}
	})
	return rf
}

// submit queues a build as the gateway does and returns its id.
func (rf *reportFarm) submit(t *testing.T) string {
	t.Helper()
	b := &kilnv1.Build{Id: buildstore.NewID(time.Now()), Tenant: "t", State: kilnv1.BuildState_BUILD_STATE_QUEUED, Spec: &kilnv1.BuildSpec{}}
	rev, err := rf.store.Create(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id, Build: b, Revision: rev})
	if _, err := rf.gw.JS.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	return b.Id
}

// pull waits until agent is handed a build.
func pullOne(t *testing.T, c *agentproto.Client) *kilnv1.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		builds, err := c.Pull(ctx, 5*time.Second)
		if len(builds) == 1 {
			return builds[0]
		}
		if ctx.Err() != nil {
			t.Fatalf("no build for agent %s: %v", c.Agent(), err)
		}
	}
}

// snapshot is what a client can see of a build: its record's revision and
// its event log.
type snapshot struct {
	rev    uint64
	state  kilnv1.BuildState
	events []*kilnv1.BuildEvent
}

func (rf *reportFarm) see(t *testing.T, id string) snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b, rev, err := rf.store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{rev: rev, state: b.State, events: bustest.EventLog(t, rf.gw.JS, id)}
}

// rawReport sends a report as a hostile agent would, with whatever it
// likes in it, on conn under its own name, and returns the answer.
func rawReport(t *testing.T, conn *bus.Conn, agent string, r *kilnv1.AgentReport) *kilnv1.AgentReportReply {
	t.Helper()
	msg, err := bus.NewMsg(bus.ReportSubject(agent), r)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	reply, err := conn.NC.RequestMsgWithContext(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	resp := &kilnv1.AgentReportReply{}
	if err := bus.Decode(reply.Data, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func unchanged(t *testing.T, what string, before, after snapshot) {
	t.Helper()
	if after.rev != before.rev || after.state != before.state || len(after.events) != len(before.events) {
		t.Fatalf("%s changed the build: revision %d → %d, %s → %s, %d → %d events",
			what, before.rev, after.rev, before.state, after.state, len(before.events), len(after.events))
	}
}

func hasFinished(s snapshot) bool {
	for _, ev := range s.events {
		if ev.GetFinished() != nil {
			return true
		}
	}
	return false
}

// TestReportsFencedByAgentAndAttempt attacks a build assigned to agent-a
// with agent-b's credential and with agent-a's stale attempts: every
// refused report writes nothing a client sees, neither the record (its KV
// revision) nor the event log; agent-a's own reports at its attempt go
// through, in order.
func TestReportsFencedByAgentAndAttempt(t *testing.T) {
	rf := newReportFarm(t)
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := agentproto.New(rf.b.NC, "agent-b")
	if err != nil {
		t.Fatal(err)
	}
	id := rf.submit(t)
	assigned := pullOne(t, ca)
	if assigned.Id != id || assigned.Agent != "agent-a" || assigned.Attempt != 1 {
		t.Fatalf("assigned %s to %q at attempt %d", assigned.Id, assigned.Agent, assigned.Attempt)
	}
	ctx := t.Context()

	// Before the start: agent-b, or agent-a at another attempt, cannot start it.
	before := rf.see(t, id)
	if _, _, err := cb.Start(ctx, assigned, time.Minute, agentproto.Hooks{}); !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("agent-b starts agent-a's build: %v, want ErrFenced", err)
	}
	stale := &kilnv1.Build{Id: id, Attempt: 2}
	if _, _, err := ca.Start(ctx, stale, time.Minute, agentproto.Hooks{}); !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("agent-a starts attempt 2 of a build at attempt 1: %v, want ErrFenced", err)
	}
	unchanged(t, "a refused start", before, rf.see(t, id))

	at, running, err := ca.Start(ctx, assigned, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if running.State != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatalf("started build is %s", running.State)
	}
	before = rf.see(t, id)

	finished := func(agent string, attempt uint32) *kilnv1.AgentReport {
		return &kilnv1.AgentReport{
			BuildId: id, Attempt: attempt, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH, Sequence: 9,
			State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{
				Pushed: []*kilnv1.PushedImage{{Tag: "registry.example.com/victim:latest", Digest: "sha256:6666666666666666666666666666666666666666666666666666666666666666"}},
			},
		}
	}
	for _, tc := range []struct {
		name   string
		conn   *bus.Conn
		agent  string
		report *kilnv1.AgentReport
		fenced bool
	}{
		{"agent-b finishes agent-a's build", rf.b, "agent-b", finished("agent-b", 1), true},
		{"agent-a finishes a stale attempt", rf.a, "agent-a", finished("agent-a", 0), true},
		{"agent-a finishes a future attempt", rf.a, "agent-a", finished("agent-a", 2), true},
		{"agent-b renews agent-a's lease", rf.b, "agent-b", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_RENEW}, true},
		{"agent-b hands agent-a's build back", rf.b, "agent-b", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_HAND_BACK}, true},
		{"agent-b appends to agent-a's log", rf.b, "agent-b", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 5,
			Events: []*kilnv1.BuildEvent{{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "forged"}}}}}, true},
		{"agent-a slips a finished event into its log", rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 5,
			Events: []*kilnv1.BuildEvent{{Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}}}}, false},
		{"agent-a slips a state event into its log", rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 5,
			Events: []*kilnv1.BuildEvent{{Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}}}}, false},
		{"agent-a finishes a build as QUEUED", rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH, State: kilnv1.BuildState_BUILD_STATE_QUEUED}, false},
		{"agent-b reports on a build that does not exist", rf.b, "agent-b", &kilnv1.AgentReport{BuildId: buildstore.NewID(time.Now()), Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_START}, true},
		{"agent-b reports on a malformed id", rf.b, "agent-b", &kilnv1.AgentReport{BuildId: "../../x", Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_START}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := rawReport(t, tc.conn, tc.agent, tc.report)
			if resp.Error == "" || resp.Fenced != tc.fenced || resp.Build != nil {
				t.Fatalf("answer %+v, want refused (fenced %v) with no record", resp, tc.fenced)
			}
			after := rf.see(t, id)
			unchanged(t, tc.name, before, after)
			if hasFinished(after) {
				t.Fatal("a finished event is in the log")
			}
		})
	}

	// agent-a's own reports: log lines, then the finish.
	for _, line := range []string{"one", "two", "three"} {
		at.Event(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: line}}})
	}
	rec, err := at.Finish(ctx, kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{ImageId: "sha256:abc"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || rec.Result.GetImageId() != "sha256:abc" {
		t.Fatalf("finished record %s %v", rec.State, rec.Result)
	}
	done := rf.see(t, id)
	var got []string
	for _, ev := range done.events {
		switch e := ev.Event.(type) {
		case *kilnv1.BuildEvent_State:
			got = append(got, e.State.State.String())
		case *kilnv1.BuildEvent_Log:
			got = append(got, e.Log.Text)
		case *kilnv1.BuildEvent_Finished:
			got = append(got, "finished "+e.Finished.State.String()+" by "+e.Finished.Agent)
		}
		if ev.Attempt != 1 || ev.BuildId != id {
			t.Errorf("event %v of build %s attempt %d", ev.Event, ev.BuildId, ev.Attempt)
		}
	}
	want := []string{"BUILD_STATE_ASSIGNED", "BUILD_STATE_RUNNING", "one", "two", "three", "finished BUILD_STATE_SUCCEEDED by agent-a"}
	if len(got) != len(want) {
		t.Fatalf("log %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("log %q, want %q", got, want)
		}
	}

	// After the end, nobody changes it: not agent-b, not agent-a.
	for _, r := range []struct {
		conn   *bus.Conn
		agent  string
		report *kilnv1.AgentReport
	}{
		{rf.b, "agent-b", finished("agent-b", 1)},
		{rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH, State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "changed my mind"}},
		{rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_HAND_BACK}},
		{rf.a, "agent-a", &kilnv1.AgentReport{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 99,
			Events: []*kilnv1.BuildEvent{{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "late"}}}}}},
	} {
		if resp := rawReport(t, r.conn, r.agent, r.report); !resp.Fenced {
			t.Fatalf("%s's %s after the finish: %+v, want fenced", r.agent, r.report.Kind, resp)
		}
	}
	unchanged(t, "reports after the finish", done, rf.see(t, id))
}

// TestReportRetriedAfterALostAnswerAppliesOnce sends agent-a's START,
// EVENTS and FINISH reports twice each, as the client does when an answer
// is lost: the record and the log are as if each was sent once.
func TestReportRetriedAfterALostAnswerAppliesOnce(t *testing.T) {
	rf := newReportFarm(t)
	ca, err := agentproto.New(rf.a.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	id := rf.submit(t)
	if b := pullOne(t, ca); b.Id != id {
		t.Fatalf("pulled %s, want %s", b.Id, id)
	}
	for _, r := range []*kilnv1.AgentReport{
		{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_START, Sequence: 1},
		{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 2,
			Events: []*kilnv1.BuildEvent{{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "once"}}}}},
		{BuildId: id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_FINISH, Sequence: 3, State: kilnv1.BuildState_BUILD_STATE_FAILED, Error: "exit 1"},
	} {
		for try := range 2 {
			if resp := rawReport(t, rf.a, "agent-a", r); resp.Error != "" {
				t.Fatalf("%s try %d: %s", r.Kind, try+1, resp.Error)
			}
		}
	}
	s := rf.see(t, id)
	if s.state != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("build is %s", s.state)
	}
	if len(s.events) != 4 { // ASSIGNED, RUNNING, once, finished
		t.Fatalf("%d events after retried reports, want 4: %v", len(s.events), s.events)
	}
}
