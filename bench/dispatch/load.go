package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// seqLabel carries a build's index in the run, so the simulated agent that
// receives it can find its sample before StartBuild has even returned.
const seqLabel = "dev.kiln.bench.seq"

// sample is one offered build's timeline, all on this process's clock.
type sample struct {
	intended  time.Time // when the ticker meant to offer it
	submitted time.Time // just before StartBuild was called
	returned  time.Time // StartBuild returned
	created   time.Time // the gateway's created_at (record about to be written)
	intake    time.Time // BuildRequested seen on kiln.requests (gateway published it)
	decided   time.Time // the dispatcher's clock at assignment: lease_expires_at − AssignTimeout
	received  time.Time // the simulated agent's pull was answered with it
	pullSent  time.Time // that pull was sent: the agent's slot was free from then on
	logged    time.Time // the dispatcher logged "build assigned" (its work on it done)
	hops                // the NATS round trips on the way, as tapped on the wire
	id        string
	agent     string
	reason    string // the router's explanation, from the ASSIGNED event
	err       error
}

// recorder collects samples from the load generator, the agents and the
// taps on kiln.requests and kiln.events.*, which may report in any order.
type recorder struct {
	assignTimeout time.Duration

	mu        sync.Mutex
	samples   []sample
	intake    map[string]time.Time
	reasons   map[string]string
	pulls     []pullSpan
	inflight  int // StartBuild calls outstanding
	maxFlight int
	probe     chan struct{} // closed when the probe build is assigned
	probed    sync.Once
	wire      *hopTap
}

func newRecorder(n int, assignTimeout time.Duration) *recorder {
	return &recorder{
		assignTimeout: assignTimeout, samples: make([]sample, n),
		intake: map[string]time.Time{}, reasons: map[string]string{}, probe: make(chan struct{}),
		wire: newHopTap(),
	}
}

// tap subscribes to the intake subject and the build events to learn when
// each build was handed to the scheduler and why it went where it went.
func (r *recorder) tap(conn *bus.Conn) error {
	if _, err := conn.NC.Subscribe(bus.SubjectRequests, func(m *nats.Msg) {
		at := time.Now()
		req := &kilnv1.BuildRequested{}
		if bus.Decode(m.Data, req) == nil {
			r.mu.Lock()
			r.intake[req.BuildId] = at
			r.mu.Unlock()
		}
	}); err != nil {
		return fmt.Errorf("tap %s: %w", bus.SubjectRequests, err)
	}
	if _, err := conn.NC.Subscribe(bus.EventsSubject("*"), func(m *nats.Msg) {
		ev := &kilnv1.BuildEvent{}
		if bus.Decode(m.Data, ev) != nil || ev.GetState().GetState() != kilnv1.BuildState_BUILD_STATE_ASSIGNED {
			return
		}
		r.mu.Lock()
		r.reasons[ev.BuildId] = ev.GetState().GetMessage()
		r.mu.Unlock()
	}); err != nil {
		return fmt.Errorf("tap build events: %w", err)
	}
	if err := r.wire.subscribe(conn.NC); err != nil {
		return err
	}
	return conn.NC.Flush()
}

// pullSpan is one pull of one agent: a free slot waiting for work.
type pullSpan struct {
	agent          string
	sent, answered time.Time
}

// pulled records every pull of the simulated agents and the builds they got.
func (r *recorder) pulled(agent string, sent, answered time.Time, builds []*kilnv1.Build) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pulls = append(r.pulls, pullSpan{agent, sent, answered})
	for _, b := range builds {
		seq := b.GetSpec().GetLabels()[seqLabel]
		if seq == "probe" {
			r.probed.Do(func() { close(r.probe) })
			continue
		}
		i, err := strconv.Atoi(seq)
		if err != nil || i < 0 || i >= len(r.samples) {
			continue
		}
		s := &r.samples[i]
		s.received, s.pullSent, s.agent = answered, sent, b.Agent
		if b.LeaseExpiresAt != nil {
			s.decided = b.LeaseExpiresAt.AsTime().Add(-r.assignTimeout)
		}
	}
}

// idleElsewhere counts the pulls of agents other than agent waiting at t:
// free slots the build could have had.
func idleElsewhere(pulls []pullSpan, agent string, t time.Time) int {
	n := 0
	for _, p := range pulls {
		if p.agent != agent && !p.sent.After(t) && p.answered.After(t) {
			n++
		}
	}
	return n
}

// request is build i's StartBuild request: repository repo's context, a
// tag no other build has.
func request(i int, repo repository, seq string) *kilnv1.StartBuildRequest {
	return &kilnv1.StartBuildRequest{
		Spec: &kilnv1.BuildSpec{
			Repository: "git.bench.local/" + repo.name,
			Tags:       []string{fmt.Sprintf("registry.bench.local/%s:b%06d", repo.name, i)},
			Labels:     map[string]string{seqLabel: seq},
		},
		Context: repo.ref,
	}
}

// probeFarm starts one build and waits until an agent receives it: the
// scheduler leads, sees the agents and answers their pulls.
func (r *recorder) probeFarm(ctx context.Context, bs kilnv1.BuildServiceClient, repo repository) error {
	r.mu.Lock()
	probed := r.probe
	r.mu.Unlock()
	if _, err := bs.StartBuild(ctx, request(-1, repo, "probe")); err != nil {
		return fmt.Errorf("probe build: %w", err)
	}
	select {
	case <-probed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("probe build was not assigned: %w", ctx.Err())
	}
}

// reprobe readies the recorder for another probeFarm.
func (r *recorder) reprobe() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.probe, r.probed = make(chan struct{}), sync.Once{}
}

// offer starts len(r.samples) builds at rate per second, open loop: a
// ticker releases each build at its time in its own goroutine, whatever
// the gateway's answer time, so a slow farm cannot slow the offered load.
// Repositories are drawn uniformly with a fixed seed.
//
// prepare, when not nil, runs before each build's StartBuild, outside the
// timed span: it returns the repository as the build should see it.
func (r *recorder) offer(ctx context.Context, bs kilnv1.BuildServiceClient, repos []repository, rate int, prepare func(context.Context, int, repository) (repository, error)) {
	rng := rand.New(rand.NewPCG(4, 200))
	pick := make([]int, len(r.samples))
	for i := range pick {
		pick[i] = rng.IntN(len(repos))
	}
	interval := time.Second / time.Duration(rate)
	t := time.NewTicker(interval)
	defer t.Stop()
	var wg sync.WaitGroup
	start := time.Now()
	for next := 0; next < len(r.samples); {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
		// Every build due by now; more than one only if the ticker lagged.
		due := min(int(time.Since(start)/interval), len(r.samples))
		for ; next < due; next++ {
			i := next
			intended := start.Add(time.Duration(i+1) * interval)
			wg.Go(func() {
				repo := repos[pick[i]]
				if prepare != nil {
					var err error
					if repo, err = prepare(ctx, i, repo); err != nil {
						r.mu.Lock()
						r.samples[i].intended, r.samples[i].err = intended, err
						r.mu.Unlock()
						return
					}
				}
				r.submit(ctx, bs, i, intended, repo)
			})
		}
	}
	wg.Wait()
}

func (r *recorder) submit(ctx context.Context, bs kilnv1.BuildServiceClient, i int, intended time.Time, repo repository) {
	req := request(i, repo, strconv.Itoa(i))
	r.mu.Lock()
	r.inflight++
	r.maxFlight = max(r.maxFlight, r.inflight)
	r.mu.Unlock()
	submitted := time.Now()
	resp, err := bs.StartBuild(ctx, req)
	returned := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight--
	s := &r.samples[i]
	s.intended, s.submitted, s.returned, s.err = intended, submitted, returned, err
	if err == nil {
		s.id, s.created = resp.Build.Id, resp.Build.CreatedAt.AsTime()
	}
}

// waitAssigned waits until every build that was started has reached an
// agent, or until timeout; it returns how many have not.
func (r *recorder) waitAssigned(ctx context.Context, timeout time.Duration) int {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		r.mu.Lock()
		left := 0
		for i := range r.samples {
			if s := &r.samples[i]; s.err == nil && s.received.IsZero() {
				left++
			}
		}
		r.mu.Unlock()
		if left == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return left
		case <-deadline.C:
			return left
		case <-t.C:
		}
	}
}

// finish joins the taps' observations and the scheduler's log into the
// samples; it returns them and every pull.
func (r *recorder) finish(assigned *assignTimes) ([]sample, []pullSpan) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.samples {
		s := &r.samples[i]
		s.intake = r.intake[s.id]
		s.reason = reasonOf(r.reasons[s.id])
		s.logged = assigned.get(s.id)
		s.hops = r.wire.get(s.id)
		if !s.decided.IsZero() && s.decided.Before(s.delivered) {
			// The intake's ack, which the tap sees, leaves after the build
			// was handed to the dispatcher; on a busy machine it may leave
			// after the decision too. The build was in the queue by then.
			s.delivered = s.decided
		}
	}
	return r.samples, r.pulls
}

// reasonOf names the routing reason in an ASSIGNED event's message.
func reasonOf(msg string) string {
	switch {
	case msg == "":
		return "unknown"
	case strings.Contains(msg, "spilled after"):
		return "spilled"
	case strings.Contains(msg, "no cache history"):
		return "hashed"
	case strings.Contains(msg, "cache score"):
		return "affinity"
	}
	return "other"
}
