package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/affinity"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// Multi-platform builds. A build whose spec names several platforms is a
// parent: at intake the scheduler creates one child build per platform
// (its spec naming that platform only, its own lineage) and queues the
// children, which are routed, leased and retried as any build; the parent
// runs no step and holds no lease while they run. It is RUNNING while its
// children run; when they have all succeeded the scheduler records their
// results on it (child_results) and queues it, and the agent it is routed
// to (any agent: it needs no platform) writes the image index referencing
// the manifests they pushed under each of the parent's tags, with the
// build's own registry credentials, which the scheduler cannot open
// (agent/index.go). That assignment is leased, fenced and retried as any
// build's, and the agent's result is the parent's: the index's digest.
// When a child fails (or is cancelled) the others are cancelled and the
// parent fails naming the platform. Cancelling the parent cancels every
// child.

// isParent reports whether b is a multi-platform build's parent.
func isParent(b *kilnv1.Build) bool { return len(b.GetSpec().GetPlatforms()) > 1 }

// indexing reports whether b is a multi-platform build's parent whose
// children have all succeeded: queued for, or leased to, the agent that
// writes its image index, a build like any other from there on.
func indexing(b *kilnv1.Build) bool { return isParent(b) && len(b.GetChildResults()) > 0 }

// platformOf is a child's platform.
func platformOf(b *kilnv1.Build) string {
	if ps := b.GetSpec().GetPlatforms(); len(ps) == 1 {
		return ps[0]
	}
	return ""
}

// kidStates remembers the children's last seen states, so that the
// parent's log gets one event per change of a child's state rather than
// one per lease renewal.
type kidStates struct {
	mu   sync.Mutex
	seen map[string]kilnv1.BuildState
}

// changed records st as id's state and reports whether it was not already.
func (k *kidStates) changed(id string, st kilnv1.BuildState) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.seen == nil {
		k.seen = map[string]kilnv1.BuildState{}
	}
	if k.seen[id] == st {
		return false
	}
	if buildstore.Terminal(st) {
		delete(k.seen, id)
		return true
	}
	k.seen[id] = st
	return true
}

// split turns a queued parent into its children: it records their ids on
// the parent (once: a redelivered intake message finds them there), moves
// the parent to RUNNING, creates the children and queues them. A parent
// that cannot be split fails with why.
func (s *Scheduler) split(ctx context.Context, parent *kilnv1.Build) error {
	if !parent.GetSpec().GetPush() {
		return s.failParent(ctx, parent.Id, "a multi-platform build pushes its platforms' images and an index referencing them: add --push (or --output type=registry)")
	}
	now := s.cfg.Now()
	ids := make([]string, len(parent.Spec.Platforms))
	for i := range ids {
		ids[i] = buildstore.NewID(now)
	}
	p, err := s.builds.Update(ctx, parent.Id, func(b *kilnv1.Build) error {
		if b.State != kilnv1.BuildState_BUILD_STATE_QUEUED || len(b.Children) > 0 {
			return errUnchangedParent
		}
		b.Children = ids
		b.State = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		return nil
	})
	switch {
	case errors.Is(err, errUnchangedParent):
		if p, _, err = s.builds.Get(ctx, parent.Id); err != nil {
			return err
		}
		if p.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED {
			return nil // split before, or cancelled meanwhile
		}
	case err != nil:
		return err
	}
	p, err = s.builds.Update(ctx, parent.Id, func(b *kilnv1.Build) error {
		if b.State != kilnv1.BuildState_BUILD_STATE_ASSIGNED {
			return errUnchangedParent
		}
		b.State = kilnv1.BuildState_BUILD_STATE_RUNNING
		b.StartedAt = timestamppb.New(now)
		return nil
	})
	if errors.Is(err, errUnchangedParent) {
		return nil
	}
	if err != nil {
		return err
	}
	var named []string
	for i, id := range p.Children {
		named = append(named, p.Spec.Platforms[i]+" as "+id)
	}
	s.event(ctx, p, &kilnv1.StateChanged{State: p.State, Message: "building " + strings.Join(named, ", ")})
	if err := s.createChildren(ctx, p); err != nil {
		return err
	}
	s.log.Info("multi-platform build split", "build_id", p.Id, "children", p.Children, "platforms", p.Spec.Platforms)
	return nil
}

// createChildren creates and queues p's children that do not exist yet
// (all of them, but for a split a former leader left half done).
func (s *Scheduler) createChildren(ctx context.Context, p *kilnv1.Build) error {
	for i, id := range p.Children {
		kid := childOf(p, id, p.Spec.Platforms[i])
		rev, err := s.builds.Create(ctx, kid)
		if err != nil {
			if _, _, gerr := s.builds.Get(ctx, id); gerr == nil {
				continue // created before a redelivery
			}
			return fmt.Errorf("create %s child of build %s: %w", kid.Spec.Platforms[0], p.Id, err)
		}
		s.event(ctx, kid, &kilnv1.StateChanged{State: kid.State, Message: "child of " + p.Id + " for " + platformOf(kid)})
		s.noteDeadline(kid)
		s.d.send(ctx, event{enqueue: kid, rev: rev})
	}
	return nil
}

var (
	errUnchangedParent = errors.New("parent unchanged")
	errCancelledParent = errors.New("parent's cancel requested")
)

// childOf is parent's child for platform: the parent's spec naming
// platform only, its own lineage (the platform is part of it).
func childOf(parent *kilnv1.Build, id, platform string) *kilnv1.Build {
	spec := proto.Clone(parent.Spec).(*kilnv1.BuildSpec)
	spec.Platforms = []string{platform}
	aff := affinity.Compute(parent.Tenant, spec, nil)
	aff.BaseImages = parent.GetAffinity().GetBaseImages()
	kid := &kilnv1.Build{
		Id: id, Tenant: parent.Tenant, Spec: spec, Context: parent.Context,
		State:     kilnv1.BuildState_BUILD_STATE_QUEUED,
		CreatedAt: parent.CreatedAt, QueuedAt: timestamppb.Now(),
		Affinity: aff, TraceContext: parent.TraceContext, Policy: parent.Policy,
		ParentId: parent.Id,
	}
	return kid
}

// childChanged follows a child's record: its state changes go to the
// parent's log, and its end may end the parent.
func (s *Scheduler) childChanged(ctx context.Context, kid *kilnv1.Build) {
	if !s.kids.changed(kid.Id, kid.State) {
		return
	}
	msg := platformOf(kid) + " (" + kid.Id + "): " + strings.ToLower(strings.TrimPrefix(kid.State.String(), "BUILD_STATE_"))
	if kid.Agent != "" {
		msg += " on " + kid.Agent
	}
	if kid.Error != "" {
		msg += ": " + kid.Error
	}
	parent := &kilnv1.Build{Id: kid.ParentId}
	s.event(ctx, parent, &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_RUNNING, Agent: kid.Agent, Message: msg})
	if buildstore.Terminal(kid.State) {
		if err := s.settleParent(ctx, kid.ParentId); err != nil && ctx.Err() == nil {
			s.log.Error("settle multi-platform build", "build_id", kid.ParentId, "err", err)
		}
	}
}

// parentChanged follows a parent's record: a cancel request goes to every
// unfinished child.
func (s *Scheduler) parentChanged(ctx context.Context, p *kilnv1.Build) {
	if !p.CancelRequested || buildstore.Terminal(p.State) || indexing(p) {
		return
	}
	s.cancelChildren(ctx, p, "", "its multi-platform build was cancelled")
}

// cancelChildren cancels p's unfinished children but except.
func (s *Scheduler) cancelChildren(ctx context.Context, p *kilnv1.Build, except, why string) {
	for _, id := range p.Children {
		if id == except {
			continue
		}
		b, outcome, err := s.builds.Cancel(ctx, id, buildstore.Cancellation{Error: why, Now: s.cfg.Now})
		if err != nil {
			s.log.Warn("cancel a multi-platform build's child", "build_id", p.Id, "child", id, "err", err)
			continue
		}
		switch outcome {
		case buildstore.CancelRequested:
			if err := s.cfg.Conn.NC.Publish(bus.CancelSubject(id), nil); err != nil {
				s.log.Warn("announce a child's cancellation", "build_id", id, "err", err)
			}
		case buildstore.CancelEnded: // Cancel published its finished event
			s.childChanged(ctx, b)
		}
	}
}

// settleParent ends parent when its children say how: failed (naming the
// platform) or cancelled as soon as one child did not succeed, queued for
// its image index once every child has.
func (s *Scheduler) settleParent(ctx context.Context, parentID string) error {
	p, _, err := s.builds.Get(ctx, parentID)
	if err != nil {
		return err
	}
	if p.State != kilnv1.BuildState_BUILD_STATE_RUNNING || indexing(p) {
		return nil
	}
	kids := make([]*kilnv1.Build, 0, len(p.Children))
	done := true
	for _, id := range p.Children {
		k, _, err := s.builds.Get(ctx, id)
		if errors.Is(err, buildstore.ErrNotFound) {
			return nil // not created yet: split is under way
		}
		if err != nil {
			return err
		}
		kids = append(kids, k)
		if !buildstore.Terminal(k.State) {
			done = false
		}
	}
	for _, k := range kids {
		if !buildstore.Terminal(k.State) || k.State == kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			continue
		}
		if p.CancelRequested {
			s.cancelChildren(ctx, p, k.Id, "its multi-platform build was cancelled")
			return s.endParent(ctx, p.Id, kilnv1.BuildState_BUILD_STATE_CANCELLED, nil, "cancelled", p.TimedOut)
		}
		why := fmt.Sprintf("platform %s failed (build %s)", platformOf(k), k.Id)
		if k.Error != "" {
			why += ": " + k.Error
		}
		s.cancelChildren(ctx, p, k.Id, "platform "+platformOf(k)+" of the same build failed")
		return s.endParent(ctx, p.Id, kilnv1.BuildState_BUILD_STATE_FAILED, nil, why, false)
	}
	if !done {
		return nil
	}
	return s.queueIndex(ctx, p.Id, kids)
}

// queueIndex records every child's result on the parent and queues it for
// an agent to write its image index (once: a parent already queued is
// left as it is); a parent whose cancel was requested meanwhile is
// cancelled instead.
func (s *Scheduler) queueIndex(ctx context.Context, id string, kids []*kilnv1.Build) error {
	results := make([]*kilnv1.ChildResult, len(kids))
	for i, k := range kids {
		results[i] = &kilnv1.ChildResult{BuildId: k.Id, Platform: platformOf(k), Result: k.Result}
	}
	var timedOut bool
	p, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		timedOut = b.TimedOut
		if b.State != kilnv1.BuildState_BUILD_STATE_RUNNING || indexing(b) {
			return errUnchangedParent
		}
		if b.CancelRequested {
			return errCancelledParent
		}
		b.ChildResults = results
		b.State = kilnv1.BuildState_BUILD_STATE_QUEUED
		b.QueuedAt = timestamppb.New(s.cfg.Now())
		return nil
	})
	switch {
	case errors.Is(err, errUnchangedParent):
		return nil
	case errors.Is(err, errCancelledParent):
		return s.endParent(ctx, id, kilnv1.BuildState_BUILD_STATE_CANCELLED, nil, "cancelled", timedOut)
	case err != nil:
		return err
	}
	s.event(ctx, p, &kilnv1.StateChanged{State: p.State, Message: "every platform built; queued for an agent to write the image index"})
	s.d.send(ctx, event{enqueue: p})
	s.log.Info("multi-platform build queued for its image index", "build_id", p.Id)
	return nil
}

// failParent fails a parent that cannot be split.
func (s *Scheduler) failParent(ctx context.Context, id, why string) error {
	return s.endParent(ctx, id, kilnv1.BuildState_BUILD_STATE_FAILED, nil, why, false)
}

// endParent records a parent's end and publishes its finished event.
func (s *Scheduler) endParent(ctx context.Context, id string, st kilnv1.BuildState, res *kilnv1.BuildResult, why string, timedOut bool) error {
	b, err := s.builds.Update(ctx, id, func(b *kilnv1.Build) error {
		if buildstore.Terminal(b.State) {
			return errUnchangedParent
		}
		b.State, b.Result, b.Error, b.TimedOut = st, res, why, timedOut
		b.FinishedAt = timestamppb.New(s.cfg.Now())
		return nil
	})
	if errors.Is(err, errUnchangedParent) {
		return nil
	}
	if err != nil {
		return err
	}
	s.forgetDeadline(id)
	s.finished(ctx, b)
	s.log.Info("multi-platform build ended", "build_id", id, "state", st.String(), "error", why)
	return nil
}

// finished publishes b's finished event.
func (s *Scheduler) finished(ctx context.Context, b *kilnv1.Build) {
	if err := bus.PublishEvent(ctx, s.cfg.Conn.JS, &kilnv1.BuildEvent{
		BuildId: b.Id, Attempt: b.Attempt,
		Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: b.State, Result: b.Result, Error: b.Error, TimedOut: b.TimedOut}},
	}); err != nil {
		s.log.Error("publish build event", "build_id", b.Id, "err", err)
	}
}

// recoverParent picks up a parent a former leader left: one still queued
// is split, a running one is settled (its children may all have ended
// while no scheduler led) and its cancel request passed on.
func (s *Scheduler) recoverParent(ctx context.Context, p *kilnv1.Build) {
	var err error
	switch p.State {
	case kilnv1.BuildState_BUILD_STATE_QUEUED, kilnv1.BuildState_BUILD_STATE_ASSIGNED:
		err = s.split(ctx, p)
	default:
		if err = s.createChildren(ctx, p); err != nil {
			break
		}
		s.parentChanged(ctx, p)
		err = s.settleParent(ctx, p.Id)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Error("recover a multi-platform build", "build_id", p.Id, "err", err)
	}
}
