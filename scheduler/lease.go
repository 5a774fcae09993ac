package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Lease handling: the builds under lease (ASSIGNED or RUNNING) as the
// sweeper sees them. The build watch moves their expiry when agents renew
// and untracks them when they end or go back to the queue; the sweeper
// re-queues a build whose lease lapsed, or fails it once it has lost
// MaxAttempts agents.

// track has the sweeper watch a build's lease, which expires at expires
// (nil: not known, look at every sweep).
func (s *Scheduler) track(id string, expires *timestamppb.Timestamp) {
	var at time.Time
	if expires != nil {
		at = expires.AsTime()
	}
	s.mu.Lock()
	s.leased[id] = at
	s.mu.Unlock()
}

// renewed notes a tracked build's new lease expiry.
func (s *Scheduler) renewed(id string, expires *timestamppb.Timestamp) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.leased[id]; ok && expires != nil {
		s.leased[id] = expires.AsTime()
	}
}

// untrack stops sweeping a build and tells the dispatcher, once; ended is
// its record if it finished.
func (s *Scheduler) untrack(ctx context.Context, id string, ended *kilnv1.Build) {
	s.mu.Lock()
	_, ok := s.leased[id]
	delete(s.leased, id)
	s.mu.Unlock()
	if ok {
		observeEnded(ended)
		s.d.send(ctx, event{released: id, ended: ended})
	}
}

// watchBuilds follows the build records: a build under lease that ends or
// goes back to the queue is untracked at once (the dispatcher learns its
// lineage's costs from its finish), and lease renewals move its expiry, so
// the sweeper reads only the records whose lease looks lapsed. A finished
// build's warm_cache_ref, written after its finish (the automatic warm
// start's export), tells the dispatcher the registry holds its lineage's
// cache.
func (s *Scheduler) watchBuilds(ctx context.Context) error {
	w, err := s.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch builds: %w", err)
	}
	return eachPut(ctx, w, "build", func(e jetstream.KeyValueEntry) {
		s.mu.Lock()
		_, tracked := s.leased[e.Key()]
		s.mu.Unlock()
		b := &kilnv1.Build{}
		if err := bus.Decode(e.Value(), b); err != nil {
			return
		}
		switch {
		case b.ParentId != "":
			s.childChanged(ctx, b)
		case isParent(b):
			s.parentChanged(ctx, b)
			if !tracked { // split, its children running; else leased for its index
				return
			}
		}
		if !tracked {
			if warm := warmCacheOnly(b); warm != nil {
				s.d.send(ctx, event{released: b.Id, ended: warm})
			}
			return
		}
		switch {
		case leased(b.State):
			s.renewed(b.Id, b.LeaseExpiresAt)
		case buildstore.Terminal(b.State):
			s.untrack(ctx, b.Id, b)
		default: // handed back: the intake queues it again
			s.untrack(ctx, b.Id, nil)
		}
	})
}

// sweep re-queues builds whose agent stopped renewing the lease, and fails
// those that have lost MaxAttempts agents.
func (s *Scheduler) sweep(ctx context.Context) error {
	return s.everySweep(ctx, func() map[string]time.Time { return s.leased }, func(ctx context.Context, id string, _ time.Time) {
		if err := s.checkLease(ctx, id); err != nil && ctx.Err() == nil {
			s.log.Error("check lease", "build_id", id, "err", err)
		}
	})
}

// everySweep calls due, every SweepEvery until ctx ends, for each build
// whose time in the map times returns (called under s.mu; a zero time: at
// once) has come.
func (s *Scheduler) everySweep(ctx context.Context, times func() map[string]time.Time, due func(ctx context.Context, id string, now time.Time)) error {
	t := time.NewTicker(s.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		now := s.cfg.Now()
		s.mu.Lock()
		var ids []string
		for id, at := range times() {
			if at.IsZero() || !now.Before(at) {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
		for _, id := range ids {
			due(ctx, id, now)
		}
	}
}

func (s *Scheduler) checkLease(ctx context.Context, id string) error {
	now := s.cfg.Now()
	cur, _, err := s.builds.Get(ctx, id)
	if errors.Is(err, buildstore.ErrNotFound) || (err == nil && !leased(cur.State)) {
		s.untrack(ctx, id, cur) // finished, cancelled or handed back
		return nil
	}
	if err != nil {
		return err
	}
	if !lapsed(cur, now) {
		s.renewed(id, cur.LeaseExpiresAt)
		return nil
	}
	var lostAgent string
	b, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		if !leased(b.State) || !lapsed(b, now) {
			return errNotLeased
		}
		lostAgent = b.Agent
		reason := buildstore.ReasonAgentLost
		if b.State == kilnv1.BuildState_BUILD_STATE_ASSIGNED {
			reason = buildstore.ReasonNotStarted
		}
		buildstore.EndAttempt(b, now, reason)
		b.LostAgents = append(b.LostAgents, lostAgent)
		b.Agent = ""
		b.LeaseExpiresAt = nil
		if b.Attempt >= s.cfg.MaxAttempts {
			b.State = kilnv1.BuildState_BUILD_STATE_FAILED
			b.FinishedAt = timestamppb.New(now)
			b.Error = fmt.Sprintf("build lost its agent %d times (%s stopped renewing its lease); giving up", b.Attempt, quoteAll(b.LostAgents))
		} else {
			b.State = kilnv1.BuildState_BUILD_STATE_QUEUED
			b.QueuedAt = timestamppb.New(now)
		}
		return nil
	})
	if errors.Is(err, errNotLeased) {
		return nil // renewed or finished meanwhile; the next sweep looks again
	}
	if err != nil {
		return err
	}
	leaseExpiries.Inc()
	var ended *kilnv1.Build // counted as finished by untrack (costs ignore failures)
	if b.State == kilnv1.BuildState_BUILD_STATE_FAILED {
		failedMaxAttempts.Inc()
		ended = b
	}
	s.untrack(ctx, id, ended)
	s.d.send(ctx, event{lost: lostAgent})
	if b.State == kilnv1.BuildState_BUILD_STATE_FAILED {
		s.log.Warn("build failed: agents lost", "build_id", id, "attempts", b.Attempt)
		if err := bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
			BuildId: id, Attempt: b.Attempt,
			Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: b.State, Error: b.Error}},
		}); err != nil {
			return err
		}
		return nil
	}
	s.event(ctx, b, &kilnv1.StateChanged{
		State: b.State, Attempt: b.Attempt,
		Message: fmt.Sprintf("agent %q stopped renewing its lease; re-queued", lostAgent),
	})
	s.d.send(ctx, event{enqueue: b})
	s.log.Warn("lease lapsed; build re-queued", "build_id", id, "agent", lostAgent, "attempt", b.Attempt)
	return nil
}

var errNotLeased = errors.New("not under a lapsed lease")

func leased(st kilnv1.BuildState) bool {
	return st == kilnv1.BuildState_BUILD_STATE_ASSIGNED || st == kilnv1.BuildState_BUILD_STATE_RUNNING
}

func lapsed(b *kilnv1.Build, now time.Time) bool {
	return b.LeaseExpiresAt == nil || !now.Before(b.LeaseExpiresAt.AsTime())
}

// quoteAll renders names as "a", "b" and "c".
func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) < 2 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " and " + q[len(q)-1]
}

// warmCacheOnly is what the dispatcher learns from a finished build's
// record that names its warm_cache_ref: the lineage and the ref alone, no
// times, so the build's run, observed when it ended, is not counted twice
// (nil when the record names none).
func warmCacheOnly(b *kilnv1.Build) *kilnv1.Build {
	if b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED || b.GetResult().GetWarmCacheRef() == "" {
		return nil
	}
	return &kilnv1.Build{
		Id: b.Id, Tenant: b.Tenant, State: b.State, Affinity: &kilnv1.Affinity{Lineage: b.GetAffinity().GetLineage()},
		Result: &kilnv1.BuildResult{WarmCacheRef: b.GetResult().GetWarmCacheRef()},
	}
}
