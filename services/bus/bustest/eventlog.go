package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// EventLog reads build id's whole event log from stream KILN_EVENTS: as
// many events as the stream holds for it when called, past any finished
// event (WatchBuild stops at the first), in order. It fails the test if
// they cannot be read.
func EventLog(t testing.TB, js jetstream.JetStream, id string) []*kilnv1.BuildEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subject := bus.EventsSubject(id)
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatalf("event log of %s: %v", id, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatalf("event log of %s: %v", id, err)
	}
	want := int(info.State.Subjects[subject])
	if want == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatalf("event log of %s: %v", id, err)
	}
	out := make([]*kilnv1.BuildEvent, 0, want)
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("event log of %s: %v", id, err)
		}
		n := 0
		for msg := range batch.Messages() {
			ev := &kilnv1.BuildEvent{}
			if err := bus.Decode(msg.Data(), ev); err != nil {
				t.Fatalf("event log of %s: %v", id, err)
			}
			out = append(out, ev)
			n++
		}
		if n == 0 {
			t.Fatalf("event log of %s: read %d of %d events: %v", id, len(out), want, batch.Error())
		}
	}
	return out
}
