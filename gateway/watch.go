package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// watchIdle is how long a watch waits for an event before it re-reads the
// build record, to notice a build whose finished event was lost.
const watchIdle = 2 * time.Second

// WatchBuild replays a build's event log from from_sequence and follows it
// live until the finished event. Sequence numbers are positions in the
// build's log, so they are stable and gap-free across reconnects.
func (g *Gateway) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.BuildService_WatchBuildServer) error {
	ctx := stream.Context()
	if _, err := g.getOwned(ctx, req.BuildId); err != nil {
		return err
	}
	events, err := g.followEvents(ctx, req.BuildId)
	if err != nil {
		return err
	}
	var seq uint64
	idleChecks := 0
	timer := time.NewTimer(watchIdle)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("event stream of build %s ended", req.BuildId)
			}
			seq++
			idleChecks = 0
			timer.Reset(watchIdle)
			ev.Sequence = seq
			if seq >= req.FromSequence {
				if err := stream.Send(&kilnv1.WatchBuildResponse{Event: ev}); err != nil {
					return err
				}
			}
			if ev.GetFinished() != nil {
				return nil
			}
		case <-timer.C:
			// A terminal record whose finished event has not arrived after
			// two idle periods lost it (its writer died between the two
			// writes): end the watch from the record.
			b, _, err := g.builds.Get(ctx, req.BuildId)
			if err != nil {
				return err
			}
			if buildstore.Terminal(b.State) {
				idleChecks++
			}
			if idleChecks >= 2 {
				seq++
				ev := &kilnv1.BuildEvent{
					Sequence: seq, Time: timestamppb.Now(), BuildId: b.Id, Attempt: b.Attempt,
					Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
						State: b.State, Result: b.Result, Error: b.Error, Agent: b.Agent,
					}},
				}
				if seq >= req.FromSequence {
					return stream.Send(&kilnv1.WatchBuildResponse{Event: ev})
				}
				return nil
			}
			timer.Reset(watchIdle)
		}
	}
}

// followEvents delivers a build's events in log order from the first one,
// until ctx ends.
func (g *Gateway) followEvents(ctx context.Context, buildID string) (<-chan *kilnv1.BuildEvent, error) {
	cons, err := g.conn.JS.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.EventsSubject(buildID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("follow events of build %s: %w", buildID, err)
	}
	out := make(chan *kilnv1.BuildEvent, 256)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		ev := &kilnv1.BuildEvent{}
		if err := bus.Decode(msg.Data(), ev); err != nil {
			g.log.ErrorContext(ctx, "undecodable build event", "build_id", buildID, "err", err)
			ev = &kilnv1.BuildEvent{BuildId: buildID, Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "kiln: undecodable event"}}}
		}
		select {
		case out <- ev:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return nil, fmt.Errorf("follow events of build %s: %w", buildID, err)
	}
	go func() {
		<-ctx.Done()
		cc.Stop()
	}()
	return out, nil
}
