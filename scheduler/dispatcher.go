package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// The dispatcher is one goroutine that owns the queue, the agents' waiting
// pulls and the view of the agents. Everything else sends it events; after
// each event it asks the pure router which queued builds go where now and
// answers the pulls of the chosen agents.
//
//	intake, lease sweeps ─┐
//	builds ended ─────────┤
//	pulls, withdrawals ───┼─▶ events ─▶ dispatcher ─▶ routing.Route ─▶ CAS ASSIGNED ─▶ event (async) ─▶ reply to pull
//	agent heartbeats ─────┘                 ▲                               │ (a writer goroutine)
//	                                        ├─ written ◀────────────────────┘
//	                                        └─ timer: next pull deadline or routing wake-up
//
// The CAS to ASSIGNED takes one round trip when the build came through the
// intake (its record and revision are known), and the ASSIGNED event is
// published without waiting for its acknowledgement, so the agent's pull is
// answered one KV write after the decision. The dispatcher does not wait
// for that write: it goes out on a goroutine of its own, holding the pull
// it will answer, and its result comes back on written, so builds and
// pulls that arrive meanwhile are routed at once instead of one quorum
// round trip later (bench/dispatch: the "dispatcher" hop).

// event is something the dispatcher must react to.
type event struct {
	enqueue  *kilnv1.Build // a build entered the queue
	rev      uint64        // enqueue's revision in KILN_BUILDS (0: not known)
	lost     string        // an agent stopped renewing a lease: drop its pulls
	pull     *pull         // an agent offers a slot
	withdraw string        // an agent takes its pulls back
	agent    *kilnv1.Agent // a heartbeat
	released string        // a leased build ended or went back to the queue
	ended    *kilnv1.Build // the record of a released build that finished, for costs
	leased   *kilnv1.Build // a build found under lease (recovery)
	done     chan struct{} // closed once the event is handled (tests, recovery)
}

// pull is one agent's waiting request for one build.
type pull struct {
	agent    string
	reply    string
	deadline time.Time
	index    int // in the dispatcher's expiry heap
}

// lease is a build under lease as the dispatcher counts it: its tenant
// (caps and fairness) and its agent.
type lease struct{ tenant, agent string }

// runningBuild is a build an agent runs, as far as the dispatcher knows:
// when it was assigned and when it is expected to end (zero: not known).
type runningBuild struct {
	id         string
	start, end time.Time
}

// dispatchDeps is what the dispatcher uses outside itself.
type dispatchDeps struct {
	log *slog.Logger
	nc  *nats.Conn // answers to pulls
	// builds and buildsKV are KV KILN_BUILDS: the store, and the bucket
	// for the one-trip CAS to ASSIGNED; agentsKV is KV KILN_AGENTS.
	builds             *buildstore.Store
	buildsKV, agentsKV jetstream.KeyValue
	routing            routing.Config
	assignTimeout      time.Duration
	now                func() time.Time
	// track has the sweeper watch an assigned build's lease.
	track func(id string, expires *timestamppb.Timestamp)
	// assigned appends an assignment's state change to the build's log
	// without waiting for the acknowledgement.
	assigned func(b *kilnv1.Build, sc *kilnv1.StateChanged)
}

type dispatcher struct {
	dispatchDeps
	queue    map[string]*kilnv1.Build
	revs     map[string]uint64 // revisions of queued records, when known
	pulls    map[string][]*pull
	expiry   expiry // the pulls by deadline
	agents   map[string]*kilnv1.Agent
	leased   map[string]lease // by build id
	events   chan event
	agentTTL time.Duration

	// assigning are the builds whose write to ASSIGNED is in flight, by
	// id; each holds the pull it will answer, and writing counts them by
	// agent (slots neither running a build nor pulling). written brings
	// the writes back; writers counts them, so run waits for them before
	// it returns.
	assigning map[string]*assignment
	writing   map[string]int
	written   chan *assignment
	writers   sync.WaitGroup

	// What each agent runs, for its expected NextFree, and what builds of
	// each lineage cost (routing weighs waiting against a cache miss).
	onAgent map[string][]runningBuild // by agent
	started map[string]time.Time      // when each leased build was assigned, by id
	ended   map[string]time.Time      // when a build of each agent last ended, by agent
	costs   *costs

	// The router's view, kept incrementally: the agent index is updated
	// only for agents whose heartbeat or pulls changed (dirty), and the
	// queue slice is rebuilt only when the queue changed.
	lostAt     map[string]time.Time // agents that lost a build, until they heartbeat again
	idx        *routing.Index
	indexed    map[string]bool
	dirty      map[string]bool
	queueSlice []routing.Build
	queueStale bool
	// staleScan is when the first indexed agent's heartbeat may go stale
	// (zero: look at the next refresh); it may be early: a look then
	// finds nothing and moves it on.
	staleScan time.Time
}

func newDispatcher(deps dispatchDeps) *dispatcher {
	return &dispatcher{
		dispatchDeps: deps, queue: map[string]*kilnv1.Build{}, revs: map[string]uint64{}, pulls: map[string][]*pull{},
		agents: map[string]*kilnv1.Agent{}, leased: map[string]lease{}, onAgent: map[string][]runningBuild{}, started: map[string]time.Time{}, ended: map[string]time.Time{}, costs: newCosts(),
		events: make(chan event, 1024), agentTTL: bus.DefaultLimits.AgentTTL,
		assigning: map[string]*assignment{}, writing: map[string]int{}, written: make(chan *assignment, 1024),
		idx: routing.NewIndex(nil), indexed: map[string]bool{}, dirty: map[string]bool{}, lostAt: map[string]time.Time{},
	}
}

// send hands ev to the dispatcher unless ctx ends first.
func (d *dispatcher) send(ctx context.Context, ev event) {
	select {
	case d.events <- ev:
	case <-ctx.Done():
	}
}

// run handles events until ctx ends; pulls still waiting are left to time
// out at their agents.
func (d *dispatcher) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			d.stop()
			return ctx.Err()
		case ev := <-d.events:
			d.apply(ev)
			d.applyWaiting()
		case j := <-d.written:
			d.assigned1(j)
			d.applyWaiting()
		case <-timer.C:
		}
		timer.Reset(max(d.dispatch(ctx), time.Millisecond))
		queueDepth.Set(float64(len(d.queue)))
	}
}

// applyWaiting takes every event and write result already waiting, so
// that they are routed in one pass.
func (d *dispatcher) applyWaiting() {
	for {
		select {
		case ev := <-d.events:
			d.apply(ev)
		case j := <-d.written:
			d.assigned1(j)
		default:
			return
		}
	}
}

// stop ends the dispatcher's term: the writes in flight finish (their
// context is done, so soon) and those that landed are answered as usual;
// every other pull is answered empty so its agent asks the next leader at
// once instead of waiting out its request timeout.
func (d *dispatcher) stop() {
	d.writers.Wait()
	for len(d.written) > 0 {
		d.assigned1(<-d.written)
	}
	for _, j := range d.assigning {
		d.reply(j.pull, nil)
	}
	clear(d.assigning)
	clear(d.writing)
	for _, ps := range d.pulls {
		for _, p := range ps {
			d.reply(p, nil)
		}
	}
}

func (d *dispatcher) apply(ev event) {
	if ev.done != nil {
		defer close(ev.done)
	}
	if ev.lost != "" {
		// Its pulls are those of a dead or frozen process: answering one
		// would hand it back the very build it lost.
		d.dropPulls(ev.lost)
		d.lostAt[ev.lost] = d.now()
		d.dirty[ev.lost] = true
	}
	switch {
	case ev.enqueue != nil && d.assigning[ev.enqueue.Id] != nil:
		// Delivered again while its write to ASSIGNED is in flight: that
		// write decides (a failed one queues it again, read afresh).
	case ev.enqueue != nil:
		d.queue[ev.enqueue.Id] = ev.enqueue
		if ev.rev != 0 {
			d.revs[ev.enqueue.Id] = ev.rev
		} else {
			delete(d.revs, ev.enqueue.Id)
		}
		d.queueStale = true
		d.release(ev.enqueue.Id)
	case ev.pull != nil:
		d.addPull(ev.pull)
		d.dirty[ev.pull.agent] = true
		d.slotFreed(ev.pull.agent)
	case ev.withdraw != "":
		d.dropPulls(ev.withdraw)
		d.dirty[ev.withdraw] = true
	case ev.agent != nil:
		d.agents[ev.agent.Name] = ev.agent
		d.dirty[ev.agent.Name] = true
	case ev.released != "":
		if ev.ended != nil {
			// How long it held its slot: from the assignment to its end,
			// as the next build assigned there will.
			var held time.Duration
			if at, ok := d.started[ev.released]; ok {
				held = d.now().Sub(at)
			}
			if d.costs.observe(ev.ended, held) {
				d.queueStale = true // the queued builds' Warm and Cold
			}
		}
		d.release(ev.released)
	case ev.leased != nil:
		d.leased[ev.leased.Id] = lease{tenant: ev.leased.Tenant, agent: ev.leased.Agent}
		if ev.leased.Agent != "" { // how long it has left is not known
			d.onAgent[ev.leased.Agent] = append(d.onAgent[ev.leased.Agent], runningBuild{id: ev.leased.Id})
			d.dirty[ev.leased.Agent] = true
		}
	}
}

// release forgets a build's lease and its place on its agent.
func (d *dispatcher) release(id string) {
	l, ok := d.leased[id]
	if !ok {
		return
	}
	delete(d.leased, id)
	delete(d.started, id)
	rs := d.onAgent[l.agent]
	if i := slices.IndexFunc(rs, func(r runningBuild) bool { return r.id == id }); i >= 0 {
		d.ended[l.agent] = d.now()
		d.onAgent[l.agent] = slices.Delete(rs, i, i+1)
		if len(d.onAgent[l.agent]) == 0 {
			delete(d.onAgent, l.agent)
		}
		d.dirty[l.agent] = true
	}
}

// slotFreed notes that a pull shows one of agent's slots free: an agent
// pulls once per free slot, so when it runs more builds than its other
// slots could hold, the one assigned first has ended (the sweeper confirms
// it within SweepEvery).
func (d *dispatcher) slotFreed(agent string) {
	a, rs := d.agents[agent], d.onAgent[agent]
	if a == nil || a.Slots == 0 || len(rs) == 0 || len(rs)+len(d.pulls[agent])+d.writing[agent] <= int(a.Slots) {
		// With nothing running there, more pulls than slots is an agent
		// whose earlier pulls timed out on its side: nothing to free.
		return
	}
	first := 0
	for i := range rs {
		if rs[i].start.Before(rs[first].start) {
			first = i
		}
	}
	d.onAgent[agent] = slices.Delete(rs, first, first+1)
}

// nextFree is when agent is expected to free a slot: the earliest expected
// end of what it runs, zero when any of it is not known. A slot whose build
// ended and whose pull has not arrived yet frees when the build ended.
func (d *dispatcher) nextFree(agent string) time.Time {
	if a := d.agents[agent]; a != nil && len(d.onAgent[agent])+len(d.pulls[agent])+d.writing[agent] < int(a.Slots) && !d.ended[agent].IsZero() {
		return d.ended[agent]
	}
	var at time.Time
	for _, r := range d.onAgent[agent] {
		if r.end.IsZero() {
			return time.Time{}
		}
		if at.IsZero() || r.end.Before(at) {
			at = r.end
		}
	}
	return at
}

// dispatch answers expired pulls, routes, assigns, and returns how soon
// it next needs to run.
func (d *dispatcher) dispatch(ctx context.Context) time.Duration {
	next := d.expirePulls(time.Now())
	if len(d.queue) == 0 {
		return next
	}
	now := d.now()
	d.refreshIndex(now)
	dec := d.idx.Decide(d.routing, d.queueInput(), d.running(), now)
	d.assignAll(ctx, dec.Assignments)
	if len(dec.Assignments) > 0 {
		// Slots were taken: decide again for the rest before sleeping.
		d.refreshIndex(now)
		dec = d.idx.Decide(d.routing, d.queueInput(), d.running(), now)
		d.assignAll(ctx, dec.Assignments)
	}
	if !dec.Wake.IsZero() {
		next = min(next, dec.Wake.Sub(now))
	}
	return next
}

// refreshIndex brings the router's agent index up to date: agents whose
// heartbeat or pulls changed are re-indexed, and agents that went stale
// or left READY are removed.
func (d *dispatcher) refreshIndex(now time.Time) {
	// Look for stale heartbeats only once the first indexed one may have
	// gone stale, not at every event: with a thousand agents that look
	// was most of the dispatcher's time.
	if !now.Before(d.staleScan) {
		d.staleScan = now.Add(d.agentTTL)
		for name := range d.indexed {
			if a := d.agents[name]; a != nil {
				if !d.routable(a, now) {
					d.dirty[name] = true
				} else {
					d.staleScan = minTime(d.staleScan, a.LastSeen.AsTime().Add(d.agentTTL))
				}
			}
		}
	}
	for name := range d.dirty {
		a, known := d.agents[name]
		switch {
		case known && d.routable(a, now):
			d.staleScan = minTime(d.staleScan, a.LastSeen.AsTime().Add(d.agentTTL))
			d.idx.Set(routing.Agent{
				Name: name, FreeSlots: len(d.pulls[name]), Slots: int(a.Slots), Running: int(a.BusySlots), NextFree: d.nextFree(name),
				Labels: routingAgentLabels(a), Lineages: a.GetCache().GetLineages(), BaseImages: a.GetCache().GetBaseImages(), Chains: a.GetCache().GetChains(),
			})
			d.indexed[name] = true
		case !known && len(d.pulls[name]) > 0 && d.lostAt[name].IsZero(): // pulling before its first heartbeat was seen
			d.idx.Set(routing.Agent{Name: name, FreeSlots: len(d.pulls[name]), Slots: len(d.pulls[name])})
			d.indexed[name] = true
		default:
			if d.indexed[name] {
				d.idx.Remove(name)
				delete(d.indexed, name)
			}
		}
		delete(d.dirty, name)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// routable reports whether an agent may be given builds: READY with a
// fresh heartbeat (draining, engine down or gone agents are not).
func (d *dispatcher) routable(a *kilnv1.Agent, now time.Time) bool {
	if a.State != kilnv1.AgentState_AGENT_STATE_READY || a.LastSeen == nil || now.Sub(a.LastSeen.AsTime()) >= d.agentTTL {
		return false
	}
	if lost, ok := d.lostAt[a.Name]; ok {
		if !a.LastSeen.AsTime().After(lost) {
			return false // no sign of life since it lost a build
		}
		delete(d.lostAt, a.Name)
	}
	return true
}

// queueInput is the queue as the router sees it, rebuilt only on change.
func (d *dispatcher) queueInput() []routing.Build {
	if d.queueStale {
		d.queueSlice = d.queueSlice[:0]
		for _, b := range d.queue {
			rb := routingBuild(b)
			d.costs.fill(&rb)
			d.queueSlice = append(d.queueSlice, rb)
		}
		d.queueStale = false
	}
	return d.queueSlice
}

// running counts each tenant's builds under lease, or on their way to it.
func (d *dispatcher) running() map[string]int {
	running := map[string]int{}
	for _, l := range d.leased {
		running[l.tenant]++
	}
	for _, j := range d.assigning {
		running[j.queued.GetTenant()]++
	}
	return running
}

func routingBuild(b *kilnv1.Build) routing.Build {
	queuedAt := b.GetQueuedAt()
	if queuedAt == nil {
		queuedAt = b.GetCreatedAt()
	}
	labels, preferred := routingBuildLabels(b.GetSpec()), routingBuildPreferred(b.GetSpec())
	if indexing(b) { // writing an image index takes no builder and no platform
		labels, preferred = b.GetSpec().GetAgentLabels(), nil
	}
	return routing.Build{
		ID: b.Id, Tenant: b.Tenant, Priority: b.GetSpec().GetPriority(),
		Lineage: b.GetAffinity().GetLineage(), BaseImages: b.GetAffinity().GetBaseImages(), Chain: b.GetAffinity().GetChain(),
		Labels: labels, Preferred: preferred, QueuedAt: queuedAt.AsTime(),
		Weight: int(b.GetPolicy().GetWeight()), MaxConcurrent: int(b.GetPolicy().GetMaxConcurrent()),
	}
}

// assignAll starts moving routed builds to ASSIGNED: each takes one of its
// agent's waiting pulls, leaves the queue and is written on a goroutine of
// its own; assigned1 finishes it when the write returns. Each write waits
// for JetStream's acknowledgement (a quorum's fsync on a replicated farm):
// written one after another they were the dispatcher's ceiling, and
// awaited by the dispatcher they held up every build that arrived
// meanwhile (bench/dispatch -cluster).
func (d *dispatcher) assignAll(ctx context.Context, as []routing.Assignment) {
	for _, a := range as {
		p := d.takePull(a.Agent)
		if p == nil {
			continue
		}
		j := &assignment{Assignment: a, started: time.Now(), now: d.now(), pull: p}
		j.queued, j.rev = d.queue[a.Build], d.revs[a.Build]
		delete(d.queue, a.Build)
		delete(d.revs, a.Build)
		d.queueStale = true
		d.dirty[a.Agent] = true
		d.assigning[a.Build] = j
		d.writing[a.Agent]++
		d.writers.Go(func() {
			d.write(ctx, j)
			select {
			case d.written <- j:
			case <-ctx.Done(): // stop finishes it
			}
		})
	}
}

// write moves j's build to ASSIGNED in KV; it runs on a writer goroutine
// and touches j alone.
func (d *dispatcher) write(ctx context.Context, j *assignment) {
	j.b, j.err = d.update(ctx, j.Build, j.queued, j.rev, func(b *kilnv1.Build) error {
		if b.State != kilnv1.BuildState_BUILD_STATE_QUEUED || buildstore.Expired(b, j.now) {
			return errNotQueued // a build past its timeout is cancelled (timeouts.go), never assigned
		}
		b.State = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		b.Agent = j.Agent
		b.Attempt++
		b.LeaseExpiresAt = timestamppb.New(j.now.Add(d.assignTimeout))
		buildstore.BeginAttempt(b, j.now)
		return nil
	})
}

// assignment is one build on its way to ASSIGNED.
type assignment struct {
	routing.Assignment
	started, now time.Time // the route span's start; the assignment's time
	pull         *pull     // the agent's pull it answers, taken from the waiting ones
	queued       *kilnv1.Build
	rev          uint64
	b            *kilnv1.Build // the record written, or
	err          error
}

// assigned1 finishes one assignment whose record write has returned.
func (d *dispatcher) assigned1(j *assignment) {
	if d.assigning[j.Build] != j {
		return // answered by stop
	}
	delete(d.assigning, j.Build)
	if d.writing[j.Agent]--; d.writing[j.Agent] == 0 {
		delete(d.writing, j.Agent)
	}
	a, b, now := j.Assignment, j.b, j.now
	if err := j.err; err != nil {
		d.putBack(j.pull)
		if !errors.Is(err, errNotQueued) {
			d.log.Error("assign build", "build_id", a.Build, "err", err)
			// The write failed, or landed unseen (a timeout, a lost
			// quorum). Either way the build must not fall out of the
			// queue: it stays queued, and the next try reads the record
			// afresh (a landed ASSIGNED is then errNotQueued); the sweeper
			// watches its lease in case it landed, so it comes back when
			// the lease that no agent holds lapses.
			d.queue[a.Build], d.revs[a.Build] = j.queued, 0
			d.track(a.Build, nil)
		}
		return
	}
	p := j.pull
	if !time.Now().Before(p.deadline) {
		// Its agent is about to give up on it: answer a fresher one.
		if q := d.takePull(a.Agent); q != nil {
			d.reply(p, nil)
			p = q
		}
	}
	d.leased[b.Id] = lease{tenant: b.Tenant, agent: a.Agent}
	r := runningBuild{id: b.Id, start: now}
	if a.Expected > 0 {
		r.end = now.Add(a.Expected)
	}
	d.onAgent[a.Agent] = append(d.onAgent[a.Agent], r)
	d.started[b.Id] = now
	d.track(b.Id, b.LeaseExpiresAt)
	// The event goes out before the reply on the same connection, so it is
	// in the build's log before anything the agent publishes about it.
	d.assigned(b, &kilnv1.StateChanged{
		State: b.State, Agent: a.Agent, Attempt: b.Attempt,
		Message: fmt.Sprintf("assigned to agent %q (attempt %d): %s", a.Agent, b.Attempt, a.Explanation),
	})
	d.reply(p, b)
	observeAssigned(b, a, now)
	d.log.Info("build assigned", "build_id", b.Id, "agent", a.Agent, "attempt", b.Attempt,
		"reason", a.Reason.String(), "score", a.Score, "best_score", a.BestScore, "why", a.Explanation)
	traceAssignment(b, a, j.started)
}

// update is buildstore's Update in one round trip when the record is known
// at a revision (rec, from the intake): the change applied to it and written
// with a revision check. If the record has moved on since (cancelled, say),
// it falls back to buildstore.Update, which reads it first.
func (d *dispatcher) update(ctx context.Context, id string, rec *kilnv1.Build, rev uint64, change func(*kilnv1.Build) error) (*kilnv1.Build, error) {
	if rec != nil && rev != 0 {
		b := proto.CloneOf(rec)
		if err := change(b); err != nil {
			return nil, err
		}
		if !buildstore.Allowed(rec.State, b.State) {
			return nil, fmt.Errorf("%w: build %s from %s to %s", buildstore.ErrBadTransition, id, rec.State, b.State)
		}
		data, err := proto.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encode build %s: %w", id, err)
		}
		_, err = d.buildsKV.Update(ctx, id, data, rev)
		if err == nil {
			return b, nil
		}
		if !bus.IsWrongRevision(err) {
			return nil, fmt.Errorf("update build %s: %w", id, err)
		}
	}
	return d.builds.Update(ctx, id, change)
}

// putBack returns a pull taken for an assignment that was not made to the
// waiting ones, or answers it empty if its deadline has passed.
func (d *dispatcher) putBack(p *pull) {
	if !time.Now().Before(p.deadline) {
		d.reply(p, nil)
		return
	}
	d.addPull(p)
	d.dirty[p.agent] = true
}

// reply answers a pull with a build, or with nothing.
func (d *dispatcher) reply(p *pull, b *kilnv1.Build) {
	resp := &kilnv1.WorkAssignment{}
	if b != nil {
		resp.Builds = []*kilnv1.Build{b}
	}
	msg, err := bus.NewMsg(p.reply, resp)
	if err == nil {
		err = d.nc.PublishMsg(msg)
	}
	if err != nil {
		// The lease brings the build back if the agent never hears of it.
		args := []any{"agent", p.agent, "err", err}
		if b != nil {
			args = append(args, "build_id", b.Id)
		}
		d.log.Error("reply to work offer", args...)
	}
}

// watchAgents feeds agent heartbeats to the dispatcher.
func (d *dispatcher) watchAgents(ctx context.Context) error {
	w, err := d.agentsKV.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch agents: %w", err)
	}
	// Deleted agents age out by last_seen.
	return eachPut(ctx, w, "agent", func(e jetstream.KeyValueEntry) {
		a := &kilnv1.Agent{}
		if err := bus.Decode(e.Value(), a); err == nil {
			d.send(ctx, event{agent: a})
		}
	})
}

// onPull turns a WorkOffer message into a pull event.
func (d *dispatcher) onPull(ctx context.Context, msg *nats.Msg) {
	offer := &kilnv1.WorkOffer{}
	if err := bus.Decode(msg.Data, offer); err != nil || offer.Agent == "" || msg.Reply == "" {
		d.log.Warn("ignoring malformed work offer", "err", err)
		return
	}
	// The subject names the agent (its credential allows only its own);
	// an offer for another name is refused.
	if agent, ok := bus.AgentFromSubject(msg.Subject); !ok || agent != offer.Agent {
		d.log.Warn("ignoring work offer for another agent than its subject names", "subject", msg.Subject, "agent", offer.Agent)
		return
	}
	// One request is answered once, so it stands for one slot. Its
	// deadline is the agent's own wall-clock timeout, not scheduler time.
	wait := min(max(offer.GetWait().AsDuration()-replyMargin, 0), maxPollWait)
	d.send(ctx, event{pull: &pull{agent: offer.Agent, reply: msg.Reply, deadline: time.Now().Add(wait)}})
}
