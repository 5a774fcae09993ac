package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// watchIdle is how long a watch waits for an event before it looks at the
// build's log and record: to notice a consumer that stopped delivering (a
// NATS node lost under it) and a build whose finished event was lost.
const watchIdle = 2 * time.Second

// finishedEventGrace is how long after its record ended a build's finished
// event may still arrive: the agent's report that carries it is tried again
// for up to 30 s (agentproto) while the events stream has no quorum.
const finishedEventGrace = 45 * time.Second

// WatchBuild replays a build's event log from from_sequence and follows it
// live until the finished event (with no_follow: to the log's end when the
// call began, past the finished event). Sequence numbers are positions in the
// build's log, so they are stable and gap-free across reconnects.
func (g *Gateway) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.BuildService_WatchBuildServer) error {
	ctx := stream.Context()
	// Every NATS request of a watch has its own deadline: a request lost
	// with a NATS node is never answered, and the client's deadline (if it
	// set one) may be far away — TestChaos' goroutine dumps showed stalled
	// watches waiting inside a KV get and a consumer's creation.
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, natsCallTimeout) }
	cctx, cancel := call()
	_, err := g.getOwned(cctx, req.BuildId)
	cancel()
	if err != nil {
		return err
	}
	// until is the stream sequence of the last event to send with
	// no_follow: the log's end when the call began.
	var until uint64
	if req.NoFollow {
		cctx, cancel := call()
		until, err = g.lastEventSeq(cctx, req.BuildId)
		cancel()
		if err != nil {
			return err
		}
		if until == 0 {
			return nil // no event yet
		}
	}
	follow, stop, err := g.followEvents(ctx, req.BuildId, 1)
	if err != nil {
		return err
	}
	defer func() { stop() }()
	var seq, streamSeq uint64 // the build's events delivered; the last one's stream sequence
	stalls := 0
	timer := time.NewTimer(watchIdle)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-follow:
			if !ok {
				return status.Errorf(codes.Unavailable, "event stream of build %s ended; resume the watch", req.BuildId)
			}
			if ev.streamSeq != 0 && ev.streamSeq <= streamSeq {
				continue // delivered before a consumer restart
			}
			seq++
			streamSeq = max(streamSeq, ev.streamSeq)
			stalls = 0
			timer.Reset(watchIdle)
			ev.Sequence = seq
			if seq >= req.FromSequence {
				if err := stream.Send(&kilnv1.WatchBuildResponse{Event: ev.BuildEvent}); err != nil {
					return err
				}
			}
			// Following, the finished event ends the watch; replaying
			// (no_follow), the log's end does: the automatic warm start's
			// cache export follows the finish.
			if ev.GetFinished() != nil && !req.NoFollow || req.NoFollow && streamSeq >= until {
				return nil
			}
		case <-timer.C:
			timer.Reset(watchIdle)
			cctx, cancel := call()
			last, err := g.lastEventSeq(cctx, req.BuildId)
			cancel()
			if err != nil {
				g.log.WarnContext(ctx, "watch: read the build's last event", "build_id", req.BuildId, "err", err)
				continue
			}
			if last > streamSeq {
				// The log holds events the consumer has not delivered for
				// two idle periods: follow it again from the next one.
				if stalls++; stalls >= 2 {
					stalls = 0
					stop()
					// On failure followEvents returns no stop: keep the one
					// just called (a cancel, so calling it again on return is
					// harmless) — assigned, the deferred call panicked and took
					// the gateway down with every watch on it (TestChaos, CI).
					next, nextStop, err := g.followEvents(ctx, req.BuildId, streamSeq+1)
					if err != nil {
						return err
					}
					follow, stop = next, nextStop
				}
				continue
			}
			// Everything in the log was delivered. A record that ended
			// long enough ago, whose finished event never came, lost it
			// (its writer died between the two writes): end the watch
			// from the record.
			cctx, cancel = call()
			b, _, err := g.builds.Get(cctx, req.BuildId)
			cancel()
			if err != nil {
				return err // a NATS timeout is Unavailable (toStatus): the client resumes
			}
			if !buildstore.Terminal(b.State) || time.Since(b.GetFinishedAt().AsTime()) < finishedEventGrace {
				continue
			}
			seq++
			ev := &kilnv1.BuildEvent{
				Sequence: seq, Time: timestamppb.Now(), BuildId: b.Id, Attempt: b.Attempt,
				Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{
					State: b.State, Result: b.Result, Error: b.Error, Agent: b.Agent, TimedOut: b.TimedOut,
				}},
			}
			if seq >= req.FromSequence {
				return stream.Send(&kilnv1.WatchBuildResponse{Event: ev})
			}
			return nil
		}
	}
}

// natsCallTimeout bounds each NATS request a watch makes.
const natsCallTimeout = 10 * time.Second

// streamEvent is a build event with its position in KILN_EVENTS.
type streamEvent struct {
	*kilnv1.BuildEvent
	streamSeq uint64
}

// followEvents delivers a build's events in log order from stream sequence
// from (1: the first), until ctx ends or stop is called.
func (g *Gateway) followEvents(ctx context.Context, buildID string, from uint64) (<-chan streamEvent, func(), error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.EventsSubject(buildID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// Unbounded (nats.go's default), creating the consumer retries for
		// ever inside Consume, which then never returns: while a NATS node
		// is lost the watch would hang before its first event, where the
		// checks below cannot see it. Bounded, the watch ends Unavailable
		// and the client resumes it with a new consumer.
		MaxResetAttempts: 4,
	}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	// nats.go sends the consumer's creation with ctx as it is, and ctx (the
	// client's stream) has no deadline: a request lost with a NATS node
	// then waits for ever (seen in TestChaos' goroutine dumps).
	octx, ocancel := context.WithTimeout(ctx, natsCallTimeout)
	cons, err := g.conn.JS.OrderedConsumer(octx, bus.StreamEvents, cfg)
	ocancel()
	if err != nil {
		return nil, nil, followError(buildID, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	out := make(chan streamEvent, 256)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		ev := &kilnv1.BuildEvent{}
		if err := bus.Decode(msg.Data(), ev); err != nil {
			g.log.ErrorContext(ctx, "undecodable build event", "build_id", buildID, "err", err)
			ev = &kilnv1.BuildEvent{BuildId: buildID, Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "kiln: undecodable event"}}}
		}
		var seq uint64
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		select {
		case out <- streamEvent{ev, seq}:
		case <-cctx.Done():
		}
	})
	if err != nil {
		cancel()
		return nil, nil, followError(buildID, err)
	}
	go func() {
		<-cctx.Done()
		cc.Stop()
	}()
	return out, cancel, nil
}

// followError is a failure to follow a build's events: the NATS cluster
// could not serve the consumer, so the client resumes the watch.
func followError(buildID string, err error) error {
	return status.Errorf(codes.Unavailable, "follow the events of build %s (retry to resume the watch): %v", buildID, err)
}

// lastEventSeq is the stream sequence of the build's last event in
// KILN_EVENTS, read from the stream's leader (0: none yet).
func (g *Gateway) lastEventSeq(ctx context.Context, buildID string) (uint64, error) {
	st, err := g.conn.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return 0, err
	}
	msg, err := st.GetLastMsgForSubject(ctx, bus.EventsSubject(buildID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return msg.Sequence, nil
}
