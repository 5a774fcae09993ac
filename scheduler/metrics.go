package scheduler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// The scheduler's Prometheus metrics, on its HTTP port (/metrics). Only the
// leader schedules, so on a standby every counter stays put, the gauges
// read 0 and kiln_scheduler_leader tells which one to look at. A count
// that changes hands mid-build (leader failover) is made once, by the
// leader that saw the change.
var (
	// waitBuckets span a build that is assigned at once (a millisecond)
	// to one that waits ten minutes for a slot.
	waitBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

	schedulerLeader = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_scheduler_leader",
		Help: "1 while this scheduler leads (and so schedules), 0 while it stands by.",
	})
	reportsFenced = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_reports_fenced_total",
		Help: "Agent reports refused because the build is not assigned to that agent at that attempt (any scheduler, leader or not).",
	})
	queueDepth = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_scheduler_queue_depth",
		Help: "Builds queued and not yet assigned, as the leader's dispatcher holds them.",
	})
	queueWait = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "kiln_scheduler_queue_wait_seconds",
		Help:    "Time a build spent QUEUED before it was ASSIGNED, every attempt (a re-queued build waits again from its re-queue).",
		Buckets: waitBuckets,
	})
	dispatchLatency = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "kiln_scheduler_dispatch_latency_seconds",
		Help:    "Time from StartBuild (the record's creation) to the build's first assignment.",
		Buckets: waitBuckets,
	})
	assignments = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_assignments_total",
		Help: "Builds assigned to an agent, by the routing reason: affinity (a best-scoring agent held its cache), spilled (best agents busy, ran elsewhere) or hashed (no agent held anything: consistent hashing).",
	}, []string{"reason"})
	redeliveries = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_redeliveries_total",
		Help: "Assignments of a build that an earlier attempt had (its agent's lease lapsed, or the agent handed it back).",
	})
	leaseExpiries = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_lease_expiries_total",
		Help: "Builds whose agent stopped renewing the lease: re-queued, or failed once they used up --max-attempts.",
	})
	timedOut = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_builds_timed_out_total",
		Help: "Builds cancelled because their timeout passed, by what the scheduler did: cancelled (queued: ended at once), requested (running: its agent asked to stop), forced (its agent did not stop it within a lease: ended by the scheduler).",
	}, []string{"action"})
	failedMaxAttempts = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_scheduler_builds_failed_max_attempts_total",
		Help: "Builds failed because they lost --max-attempts agents.",
	})
	buildsFinished = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_scheduler_builds_finished_total",
		Help: "Builds that ended after they were assigned, by result (succeeded, failed, cancelled). Builds cancelled while queued never reach an agent: the gateway counts them (kiln_gateway_builds_cancelled_queued_total).",
	}, []string{"result"})
)

func init() {
	for _, r := range []routing.Reason{routing.Affinity, routing.Spilled, routing.Hashed} {
		assignments.WithLabelValues(r.String())
	}
	for _, st := range []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED} {
		buildsFinished.WithLabelValues(resultLabel(st))
	}
}

// observeAssigned records an assignment of b (its record after the CAS to
// ASSIGNED) at now.
func observeAssigned(b *kilnv1.Build, a routing.Assignment, now time.Time) {
	assignments.WithLabelValues(a.Reason.String()).Inc()
	if q := b.GetQueuedAt(); q != nil {
		queueWait.Observe(max(now.Sub(q.AsTime()), 0).Seconds())
	}
	if b.Attempt > 1 {
		redeliveries.Inc()
	} else if c := b.GetCreatedAt(); c != nil {
		dispatchLatency.Observe(max(now.Sub(c.AsTime()), 0).Seconds())
	}
}

// observeEnded counts a build that ended while under lease; b is nil or
// not terminal when it went back to the queue instead.
func observeEnded(b *kilnv1.Build) {
	if b != nil && buildstore.Terminal(b.State) {
		buildsFinished.WithLabelValues(resultLabel(b.State)).Inc()
	}
}

// resultLabel is a terminal state as a label value: "succeeded", "failed",
// "cancelled".
func resultLabel(st kilnv1.BuildState) string {
	switch st {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED:
		return "succeeded"
	case kilnv1.BuildState_BUILD_STATE_FAILED:
		return "failed"
	case kilnv1.BuildState_BUILD_STATE_CANCELLED:
		return "cancelled"
	}
	return "other"
}
