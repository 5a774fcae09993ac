package gateway

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// endRecord writes b's record as SUCCEEDED, finished at finishedAt, as the
// scheduler does before it publishes the finished event.
func endRecord(t *testing.T, h *casHarness, b *kilnv1.Build, finishedAt time.Time) {
	t.Helper()
	kv, err := h.conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	done := proto.CloneOf(b)
	done.State, done.FinishedAt = kilnv1.BuildState_BUILD_STATE_SUCCEEDED, timestamppb.New(finishedAt)
	data, err := proto.Marshal(done)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), b.Id, data); err != nil {
		t.Fatal(err)
	}
}

// watchToEnd watches b from its first event and returns what it got.
func watchToEnd(t *testing.T, h *casHarness, b *kilnv1.Build) []*kilnv1.BuildEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	w, err := h.builds.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: b.Id, FromSequence: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []*kilnv1.BuildEvent
	for {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("watch ended without a finished event after %d events: %v", len(got), err)
		}
		got = append(got, resp.Event)
		if resp.Event.GetFinished() != nil {
			return got
		}
	}
}

// TestWatchWaitsForADelayedFinishedEvent: a build whose record ended just
// now but whose finished event comes later (its report retried while the
// events stream had no quorum) is watched to its real finished event, not
// to one the gateway makes up from the record after a few idle periods.
func TestWatchWaitsForADelayedFinishedEvent(t *testing.T) {
	h := startCASGateway(t, Limits{})
	ref, _ := h.sendContext(t, map[string][]byte{"Dockerfile": []byte("FROM scratch\n")})
	b := h.startBuild(t, ref, "127.0.0.1:5000/watch/delayed:1")
	endRecord(t, h, b, time.Now())
	published := make(chan struct{})
	defer func() { <-published }() // its publish's ack may come after the watch's end
	go func() {
		defer close(published)
		// The scenario: the finished event arrives three idle periods late.
		select {
		case <-time.After(3 * watchIdle):
		case <-t.Context().Done():
			return
		}
		ev := &kilnv1.BuildEvent{BuildId: b.Id, Time: timestamppb.Now(), Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
			State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED, Result: &kilnv1.BuildResult{ImageId: "sha256:the-real-one"},
		}}}
		msg, err := bus.NewMsg(bus.EventsSubject(b.Id), ev)
		if err == nil {
			_, err = h.conn.JS.PublishMsg(t.Context(), msg)
		}
		if err != nil {
			t.Errorf("publish the finished event: %v", err)
		}
	}()
	got := watchToEnd(t, h, b)
	fin := got[len(got)-1].GetFinished()
	if fin.GetResult().GetImageId() != "sha256:the-real-one" {
		t.Fatalf("the watch ended with a finished event the gateway made up (%v), not the build's own", fin)
	}
	for i, ev := range got {
		if ev.Sequence != uint64(i+1) {
			t.Fatalf("event %d has sequence %d", i, ev.Sequence)
		}
	}
}

// TestWatchEndsFromARecordWhoseFinishedEventWasLost: a record that ended
// longer ago than any report is retried, whose finished event never came
// (its writer died between the two writes), ends the watch from the record.
func TestWatchEndsFromARecordWhoseFinishedEventWasLost(t *testing.T) {
	h := startCASGateway(t, Limits{})
	ref, _ := h.sendContext(t, map[string][]byte{"Dockerfile": []byte("FROM scratch\n")})
	b := h.startBuild(t, ref, "127.0.0.1:5000/watch/lost:1")
	endRecord(t, h, b, time.Now().Add(-2*finishedEventGrace))
	got := watchToEnd(t, h, b)
	fin := got[len(got)-1]
	if fin.GetFinished().GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || fin.Sequence != uint64(len(got)) {
		t.Fatalf("watch ended with %v at sequence %d of %d events, want SUCCEEDED from the record, last", fin, fin.Sequence, len(got))
	}
}

// TestWatchWithoutFollowEndsAtTheLogsEnd: no_follow (kiln logs without -f)
// replays what a running build's log holds when the call begins and ends
// the stream there, without waiting for the finished event.
func TestWatchWithoutFollowEndsAtTheLogsEnd(t *testing.T) {
	h := startCASGateway(t, Limits{})
	ref, _ := h.sendContext(t, map[string][]byte{"Dockerfile": []byte("FROM scratch\n")})
	b := h.startBuild(t, ref, "127.0.0.1:5000/watch/nofollow:1")
	for i := range 3 {
		ev := &kilnv1.BuildEvent{BuildId: b.Id, Time: timestamppb.Now(), Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: 1, Text: string(rune('a' + i))}}}
		msg, err := bus.NewMsg(bus.EventsSubject(b.Id), ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.conn.JS.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	want, err := h.conn.JS.Stream(t.Context(), bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := want.Info(t.Context(), jetstream.WithSubjectFilter(bus.EventsSubject(b.Id)))
	if err != nil {
		t.Fatal(err)
	}
	stored := info.State.Subjects[bus.EventsSubject(b.Id)]

	for _, from := range []uint64{1, 2, stored} {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		w, err := h.builds.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: b.Id, FromSequence: from, NoFollow: true})
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for {
			resp, err := w.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("from %d: after %v: %v", from, seqs, err)
			}
			seqs = append(seqs, resp.Event.Sequence)
		}
		cancel()
		if uint64(len(seqs)) != stored-from+1 || seqs[0] != from || seqs[len(seqs)-1] != stored {
			t.Fatalf("from %d: got sequences %v, want %d..%d", from, seqs, from, stored)
		}
		if got := seqs[len(seqs)-1]; got != stored {
			t.Fatalf("from %d: ended at %d, the log holds %d", from, got, stored)
		}
	}
}

// TestWatchReplaysPastTheFinishedEvent: the automatic warm start's cache
// export lands after a build's finished event; a replay (no_follow) shows
// it, a watch following live ends at the finished event as before.
func TestWatchReplaysPastTheFinishedEvent(t *testing.T) {
	h := startCASGateway(t, Limits{})
	ref, _ := h.sendContext(t, map[string][]byte{"Dockerfile": []byte("FROM scratch\n")})
	b := h.startBuild(t, ref, "127.0.0.1:5000/watch/afterfinish:1")
	endRecord(t, h, b, time.Now())
	for _, ev := range []*kilnv1.BuildEvent{
		{BuildId: b.Id, Time: timestamppb.Now(), Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}},
		{BuildId: b.Id, Time: timestamppb.Now(), Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
			Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: "registry:5000/kiln-cache/t:l", Type: "registry", Automatic: true,
		}}},
	} {
		msg, err := bus.NewMsg(bus.EventsSubject(b.Id), ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.conn.JS.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if got := watchToEnd(t, h, b); got[len(got)-1].GetFinished() == nil {
		t.Fatalf("following, the watch ended with %v", got[len(got)-1])
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	w, err := h.builds.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: b.Id, FromSequence: 1, NoFollow: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []*kilnv1.BuildEvent
	for {
		resp, err := w.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("replay after %d events: %v", len(got), err)
		}
		got = append(got, resp.Event)
	}
	if n := len(got); n < 2 || got[n-2].GetFinished() == nil || got[n-1].GetCache().GetRef() != "registry:5000/kiln-cache/t:l" {
		t.Fatalf("replay: %v, want the finished event then the cache export", got)
	}
}
