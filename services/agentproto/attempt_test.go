package agentproto_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// logOf reads a build's whole event log, as many events as the stream
// holds for it.
func logOf(t *testing.T, conn *bus.Conn, id string) []*kilnv1.BuildEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := conn.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(bus.EventsSubject(id)))
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Subjects[bus.EventsSubject(id)])
	cons, err := conn.JS.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.EventsSubject(id)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []*kilnv1.BuildEvent
	for len(out) < n {
		msg, err := cons.Next()
		if err != nil {
			t.Fatalf("event %d of %d: %v", len(out)+1, n, err)
		}
		ev := &kilnv1.BuildEvent{}
		if err := bus.Decode(msg.Data(), ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// TestAttemptKeepsTheOrderOfManyEvents sends more events than fit in one
// batch, some large, from two goroutines' worth of output in sequence: the
// log holds every one, in order, between RUNNING and the finished event.
func TestAttemptKeepsTheOrderOfManyEvents(t *testing.T) {
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
	b := assigned(t, store, "agent-a")
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
	evs := logOf(t, conn, b.Id)
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
	b := assigned(t, store, "agent-a")
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
	for _, ev := range logOf(t, conn, b.Id) {
		if ev.GetLog().GetText() == "stale" || ev.GetFinished() != nil {
			t.Fatalf("the lost attempt's %v is in the log", ev.Event)
		}
	}
	if len(fenced) != 0 {
		t.Fatal("the hook heard of the fence twice")
	}
}
