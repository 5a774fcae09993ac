package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Intake: the builds the gateway accepted, from the KILN_REQUESTS stream
// (durable consumer "kiln-scheduler") into the dispatcher's queue.

// consumeIntake moves new builds from KILN_REQUESTS into the queue.
func (s *Scheduler) consumeIntake(ctx context.Context) error {
	cons, err := s.intakeConsumer(ctx)
	if err != nil {
		return err
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		req := &kilnv1.BuildRequested{}
		if err := bus.Decode(msg.Data(), req); err != nil || !buildstore.ValidID(req.BuildId) {
			s.log.Error("dropping malformed intake message", "err", err)
			_ = msg.Term()
			return
		}
		b, rev, err := s.intakeRecord(ctx, msg, req)
		if err != nil {
			if errors.Is(err, buildstore.ErrNotFound) {
				_ = msg.Term()
			} else {
				_ = msg.Nak() // try again later
			}
			return
		}
		if b.State == kilnv1.BuildState_BUILD_STATE_QUEUED && isParent(b) && !indexing(b) {
			s.noteDeadline(b)
			if err := s.split(ctx, b); err != nil {
				s.log.Error("split a multi-platform build", "build_id", b.Id, "err", err)
				_ = msg.Nak() // try again later
				return
			}
			_ = msg.Ack()
			return
		}
		if b.State == kilnv1.BuildState_BUILD_STATE_QUEUED {
			s.noteDeadline(b)
			s.d.send(ctx, event{enqueue: b, rev: rev})
		}
		_ = msg.Ack()
	})
	if err != nil {
		return fmt.Errorf("consume intake: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return ctx.Err()
}

// intakeConsumer creates (or finds) the durable intake consumer, trying
// again while the NATS cluster cannot answer. Each try has its own
// deadline: nats.go sends the request with ctx as it is, and a request
// lost with a NATS node would otherwise wait for ever, leaving a leader
// that takes no new builds.
func (s *Scheduler) intakeConsumer(ctx context.Context) (jetstream.Consumer, error) {
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := s.cfg.Conn.JS.CreateOrUpdateConsumer(tctx, bus.StreamRequests, jetstream.ConsumerConfig{
			Durable:   "kiln-scheduler",
			AckPolicy: jetstream.AckExplicitPolicy,
			AckWait:   30 * time.Second,
		})
		cancel()
		if err == nil {
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !bus.IsUnavailable(err) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("intake consumer: %w", err)
		}
		s.log.Warn("intake consumer; trying again", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// intakeRecord is the record an intake message names: the copy it carries
// on its first delivery (the gateway has just created it), else KV's.
func (s *Scheduler) intakeRecord(ctx context.Context, msg jetstream.Msg, req *kilnv1.BuildRequested) (*kilnv1.Build, uint64, error) {
	if b := req.GetBuild(); b != nil && b.Id == req.BuildId && req.Revision != 0 {
		if md, err := msg.Metadata(); err == nil && md.NumDelivered == 1 {
			return b, req.Revision, nil
		}
	}
	return s.builds.Get(ctx, req.BuildId)
}
