package agentproto_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// serve runs the schedulers' report handler on conn until the test ends.
func serve(t *testing.T, conn *bus.Conn) {
	t.Helper()
	h, err := agentproto.NewHandler(t.Context(), agentproto.HandlerConfig{Conn: conn, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// assigned creates a build ASSIGNED to agent at attempt 1.
func assigned(t *testing.T, store *buildstore.Store, agent string) *kilnv1.Build {
	t.Helper()
	b := &kilnv1.Build{Id: buildstore.NewID(time.Now()), State: kilnv1.BuildState_BUILD_STATE_ASSIGNED, Agent: agent, Attempt: 1}
	if _, err := store.Create(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	return b
}

// setUp returns an agent-a client on a fresh NATS server with the report
// handler serving, and a build assigned to agent-a at attempt 1.
func setUp(t *testing.T) (*bus.Conn, *buildstore.Store, *agentproto.Client, *kilnv1.Build) {
	t.Helper()
	conn := bustest.Conn(t)
	serve(t, conn)
	store, err := buildstore.Open(t.Context(), conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agentproto.New(conn.NC, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	return conn, store, c, assigned(t, store, "agent-a")
}

// TestAttemptKeepsTheOrderOfManyEvents sends more events than fit in one
// batch, some large, from two goroutines' worth of output in sequence: the
// log holds every one, in order, between RUNNING and the finished event.
func TestAttemptKeepsTheOrderOfManyEvents(t *testing.T) {
	conn, _, c, b := setUp(t)
	at, rec, err := c.Start(t.Context(), b, time.Minute, agentproto.Hooks{Failed: func(err error) { t.Errorf("events: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != kilnv1.BuildState_BUILD_STATE_RUNNING || rec.LeaseExpiresAt == nil {
		t.Fatalf("started record: %s, lease %v", rec.State, rec.LeaseExpiresAt)
	}
	const n = 3 * agentproto.MaxBatch
	big := strings.Repeat("x", 64<<10)
	for i := range n {
		text := fmt.Sprint(i)
		if i%50 == 7 {
			text += big // a few lines large enough to split batches by size
		}
		at.Event(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: text}}})
	}
	if _, err := at.Renew(t.Context(), time.Minute); err != nil {
		t.Fatal(err)
	}
	fin, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if fin.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("finished record: %s", fin.State)
	}
	evs := bustest.EventLog(t, conn.JS, b.Id)
	if len(evs) != n+2 {
		t.Fatalf("%d events, want RUNNING, %d lines and finished", len(evs), n)
	}
	if evs[0].GetState().GetState() != kilnv1.BuildState_BUILD_STATE_RUNNING || evs[n+1].GetFinished() == nil {
		t.Fatalf("log starts with %v and ends with %v", evs[0].Event, evs[n+1].Event)
	}
	for i := range n {
		if got := strings.TrimRight(evs[i+1].GetLog().GetText(), "x"); got != fmt.Sprint(i) {
			t.Fatalf("line %d is %q", i, got)
		}
	}
}

// TestAttemptThatLostItsBuildIsFenced: once the build is given to another
// attempt, the next batch is refused, the hook hears of it once, and the
// finish is refused without writing.
func TestAttemptThatLostItsBuildIsFenced(t *testing.T) {
	conn, store, c, b := setUp(t)
	fenced := make(chan error, 2)
	at, _, err := c.Start(t.Context(), b, time.Minute, agentproto.Hooks{Fenced: func(err error) { fenced <- err }})
	if err != nil {
		t.Fatal(err)
	}
	// The lease lapsed and the build went to agent-b at attempt 2.
	for _, change := range []func(r *kilnv1.Build){
		func(r *kilnv1.Build) { r.State, r.Agent = kilnv1.BuildState_BUILD_STATE_QUEUED, "" },
		func(r *kilnv1.Build) {
			r.State, r.Agent, r.Attempt = kilnv1.BuildState_BUILD_STATE_ASSIGNED, "agent-b", 2
		},
	} {
		if _, err := store.Update(t.Context(), b.Id, func(r *kilnv1.Build) error { change(r); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, err := store.Get(t.Context(), b.Id)
	if err != nil {
		t.Fatal(err)
	}
	at.Event(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "stale"}}})
	select {
	case err := <-fenced:
		if !errors.Is(err, buildstore.ErrFenced) {
			t.Fatalf("hook: %v", err)
		}
	case <-t.Context().Done():
		t.Fatal("the fenced batch was never reported")
	}
	if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("finish of a lost build: %v, want ErrFenced", err)
	}
	cur, after, err := store.Get(t.Context(), b.Id)
	if err != nil {
		t.Fatal(err)
	}
	if after != rev || cur.Agent != "agent-b" {
		t.Fatalf("record changed: revision %d → %d, agent %q", rev, after, cur.Agent)
	}
	for _, ev := range bustest.EventLog(t, conn.JS, b.Id) {
		if ev.GetLog().GetText() == "stale" || ev.GetFinished() != nil {
			t.Fatalf("the lost attempt's %v is in the log", ev.Event)
		}
	}
	if len(fenced) != 0 {
		t.Fatal("the hook heard of the fence twice")
	}
}

// TestAttemptLogIsCutAtTheTenantsLimit: a build whose tenant keeps 1000
// bytes of log text prints 2700 in 300 lines (more than MaxBatch events,
// so several reports): the log
// holds the lines up to the limit, one marker line, no line after it, and
// every step event and the finished event.
func TestAttemptLogIsCutAtTheTenantsLimit(t *testing.T) {
	conn, store, c, b := setUp(t)
	const limit = 1000
	if _, err := store.Update(t.Context(), b.Id, func(r *kilnv1.Build) error {
		r.Policy = &kilnv1.TenantPolicy{LogMaxBytes: limit}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	at, _, err := c.Start(t.Context(), b, time.Minute, agentproto.Hooks{Failed: func(err error) { t.Errorf("events: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}
	const lines = 300
	for i := range lines {
		at.Event(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: 1 + uint32(i/100), Text: fmt.Sprintf("line %04d", i)}}}) // 9 bytes
		if i%100 == 99 {
			at.Event(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_StepFinished{StepFinished: &kilnv1.StepFinished{Step: 1 + uint32(i/100)}}})
		}
	}
	if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); err != nil {
		t.Fatal(err)
	}
	var text, kept, markers, steps int
	finished := false
	for _, ev := range bustest.EventLog(t, conn.JS, b.Id) {
		switch {
		case ev.GetLog() != nil && ev.GetLog().GetText() == agentproto.LogLimitMarker(limit):
			markers++
			if ev.GetLog().GetStep() != 2 {
				t.Errorf("marker of step %d, want 2 (the step of the first line dropped)", ev.GetLog().GetStep())
			}
		case ev.GetLog() != nil:
			if markers > 0 {
				t.Fatalf("line %q after the marker", ev.GetLog().GetText())
			}
			if want := fmt.Sprintf("line %04d", kept); ev.GetLog().GetText() != want {
				t.Fatalf("line %d is %q, want %q", kept, ev.GetLog().GetText(), want)
			}
			kept++
			text += len(ev.GetLog().GetText())
		case ev.GetStepFinished() != nil:
			steps++
		case ev.GetFinished() != nil:
			finished = true
		}
	}
	if kept != limit/9 || text > limit || markers != 1 || steps != 3 || !finished {
		t.Fatalf("log: %d lines (%d bytes), %d markers, %d steps finished, finished %v; want %d lines, 1 marker, 3 steps, finished",
			kept, text, markers, steps, finished, limit/9)
	}
}
