package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

// dist summarizes latencies in milliseconds.
type dist struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func distOf(ms []float64) dist {
	if len(ms) == 0 {
		return dist{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	rank := func(p float64) float64 { // nearest rank
		return s[max(int(math.Ceil(p*float64(len(s))))-1, 0)]
	}
	var sum float64
	for _, v := range s {
		sum += v
	}
	return dist{N: len(s), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// segment is one stretch of a build's way from the client to an agent.
type segment struct {
	Name string `json:"name"`
	What string `json:"what"`
	Dist dist   `json:"latency"`
	// TailMeanMS is the segment's mean over the builds whose total is at
	// or above the total's p99: where the slowest 1% spent their time.
	TailMeanMS float64 `json:"slowest_1pct_mean_ms"`
	of         func(*sample) (time.Duration, bool)
}

// segments are the hops of a build's way in order: they add up to its
// submit-to-assigned (where every hop was seen). The writes are timed on
// the wire (hops.go): published, and acknowledged by JetStream.
var segments = []segment{
	{Name: "gateway before its first write", What: "submit → the in-flight claim published: gRPC, validation, context check (remembered after a context's first build)",
		of: func(s *sample) (time.Duration, bool) { return s.claimSent.Sub(s.submitted), !s.claimSent.IsZero() }},
	{Name: "in-flight claim (KV create)", What: "KILN_INFLIGHT create published → acknowledged (stored by a quorum, fsync on each)",
		of: func(s *sample) (time.Duration, bool) {
			return s.claimAcked.Sub(s.claimSent), !s.claimAcked.IsZero() && !s.claimSent.IsZero()
		}},
	{Name: "record (KV create)", What: "claim acknowledged → the record's create in KILN_BUILDS acknowledged: gateway, then one quorum write",
		of: func(s *sample) (time.Duration, bool) {
			return s.createAcked.Sub(s.claimAcked), !s.createAcked.IsZero() && !s.claimAcked.IsZero()
		}},
	{Name: "gateway hands over", What: "record acknowledged → BuildRequested published on kiln.requests (QUEUED event published just before, unawaited)",
		of: func(s *sample) (time.Duration, bool) {
			return s.intake.Sub(s.createAcked), !s.intake.IsZero() && !s.createAcked.IsZero()
		}},
	{Name: "intake stored and delivered", What: "kiln.requests published → the scheduler's intake acknowledged it, the build in its dispatcher's queue: a quorum write, the consumer's delivery, the intake callback",
		of: func(s *sample) (time.Duration, bool) {
			return s.delivered.Sub(s.intake), !s.delivered.IsZero() && !s.intake.IsZero()
		}},
	{Name: "waiting for its agent", What: "delivered → the pull that got it was sent: queued while every slot of the agent it went to was busy (the router held it for its preferred agent: by its lineage's costs, or delay scheduling)",
		of: func(s *sample) (time.Duration, bool) {
			return max(s.pullSent.Sub(s.delivered), 0), !s.pullSent.IsZero() && !s.delivered.IsZero()
		}},
	{Name: "dispatcher", What: "the later of the intake and that pull → the dispatcher's decision: its event queue, routing (the intake's ack, which marks the start, is published just after the hand-over, so with nothing waiting this reads about 0, even a little below; an ack seen after the decision counts as at the decision)",
		of: func(s *sample) (time.Duration, bool) {
			return s.decided.Sub(later(s.delivered, s.pullSent)), !s.decided.IsZero() && !s.delivered.IsZero() && !s.pullSent.IsZero()
		}},
	{Name: "CAS to ASSIGNED (KV update)", What: "decision → the record's update to ASSIGNED acknowledged: one quorum write",
		of: func(s *sample) (time.Duration, bool) {
			return s.assignAcked.Sub(s.decided), !s.assignAcked.IsZero() && !s.decided.IsZero()
		}},
	{Name: "reply to the agent", What: "CAS acknowledged → the agent's pull answered: ASSIGNED event published (unawaited), reply over NATS",
		of: func(s *sample) (time.Duration, bool) {
			return s.received.Sub(s.assignAcked), !s.received.IsZero() && !s.assignAcked.IsZero()
		}},
}

// writeRTTs are the path's JetStream writes, published → acknowledged.
type writeRTTs struct {
	Claim  dist `json:"inflight_claim"`
	Create dist `json:"record_create"`
	Intake dist `json:"intake_publish"`
	Assign dist `json:"cas_to_assigned"`
}

type result struct {
	Benchmark     string  `json:"benchmark"`
	Measured      string  `json:"measured"`
	GoVersion     string  `json:"go_version"`
	CPUs          int     `json:"cpus"`
	RatePerS      int     `json:"offered_rate_per_s"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	Agents        int     `json:"agents"`
	Slots         int     `json:"slots_per_agent"`
	BuildTimeMS   float64 `json:"build_time_ms"`
	Repositories  int     `json:"repositories"`
	ContextFormat string  `json:"context_format"`
	FreshContexts bool    `json:"fresh_contexts"`
	RouteDelayMS  float64 `json:"route_delay_ms"`

	Offered      int     `json:"offered"`
	StartErrors  int     `json:"start_errors"`
	FirstError   string  `json:"first_error,omitempty"`
	Assigned     int     `json:"assigned"`
	Unassigned   int     `json:"unassigned_at_end"`
	OfferedPerS  float64 `json:"offered_per_s"`
	StartedPerS  float64 `json:"started_per_s"`
	AssignedPerS float64 `json:"assigned_per_s"`
	MaxInFlight  int     `json:"max_startbuild_in_flight"`
	GenLagP99MS  float64 `json:"generator_lag_p99_ms"`
	CPUBusy      float64 `json:"cpu_busy_fraction"`
	// CPUPressure is the share of the offered period in which some task
	// on the machine (this process's included) waited for a CPU.
	CPUPressure float64 `json:"cpu_pressure_some_fraction"`

	Latency dist `json:"submit_to_assigned"`
	// NoWait is the same minus the time each build waited for a slot on
	// the agent it went to: the farm's own path, routing holds taken out.
	NoWait dist `json:"submit_to_assigned_minus_wait_for_agent"`
	// Gateway is the gateway's part of the total (submit → the intake
	// message on kiln.requests: gRPC, validation, context check, record,
	// QUEUED event), Scheduler the rest (the intake message → the agent's
	// pull answered: JetStream delivery, record read, routing, CAS to
	// ASSIGNED, reply), waiting for a slot included.
	Gateway      dist            `json:"submit_to_intake_gateway"`
	Scheduler    dist            `json:"intake_to_assigned_scheduler"`
	StartBuild   dist            `json:"startbuild_round_trip"`
	BeforeReturn float64         `json:"assigned_before_startbuild_returned_fraction"`
	Segments     []segment       `json:"segments"`
	ByReason     map[string]dist `json:"submit_to_assigned_by_routing_reason"`
	// Assign is the dispatcher goroutine's time per build in
	// dispatcher.assign (decision → "build assigned" logged: CAS to
	// ASSIGNED, reply, ASSIGNED event acknowledged by JetStream), and
	// AssignBusy the fraction of the measured period it spent there.
	Assign     dist    `json:"dispatcher_assign_per_build"`
	AssignBusy float64 `json:"dispatcher_assign_busy_fraction"`
	// AgentBuildsPerS is how many builds/s the busiest and the least busy
	// agent received: affinity routing concentrates lineages.
	AgentBuildsPerS struct {
		Min  float64 `json:"min"`
		Mean float64 `json:"mean"`
		Max  float64 `json:"max"`
	} `json:"agent_builds_per_s"`
	IdleAgents int `json:"agents_without_builds"`
	// Waited counts the builds queued while every slot of the agent they
	// went to was busy; IdleElsewhere is how many slots of other agents
	// were free (pulls waiting) when each of them arrived.
	Waited        int  `json:"builds_that_waited_for_their_agent"`
	WaitedFor     dist `json:"wait_for_their_agent"`
	IdleElsewhere struct {
		Median float64 `json:"median"`
		Min    float64 `json:"min"`
	} `json:"free_slots_elsewhere_while_waiting"`
	// KVRead and KVWrite are one JetStream KV Get and Put round trip,
	// probed every 10 ms during the load on a connection of their own.
	KVRead  dist `json:"kv_get_round_trip"`
	KVWrite dist `json:"kv_put_round_trip"`
	// Fsync is one 300-byte write and fsync in a file beside the NATS
	// store, every 10 ms during the load: the price of each write's
	// fsyncs (raft log and store, on every replica).
	Fsync dist `json:"fsync_probe"`
	// WritesPerBuild is, per JetStream stream, the writes (quorum writes
	// on a replicated farm) per build offered during the period, the
	// probes' included (KV_KILN_IDEMPOTENCY is the round-trip probe's).
	WritesPerBuild map[string]float64 `json:"stream_writes_per_build"`
	// Writes are the round trips of the quorum writes on the path, each
	// from its publish to its acknowledgement as tapped on the wire.
	Writes writeRTTs `json:"path_write_round_trips"`

	// NATSNodes is 0 for the nats-server library in this process, else
	// how many nats-server processes (one cluster) the farm ran on, with
	// Replicas replicas of every stream; NATSCPUBusy is the share of the
	// machine's CPUs those processes used (their CPU is not in CPUBusy).
	NATSNodes   int     `json:"nats_nodes"`
	Replicas    int     `json:"nats_replicas"`
	NATSCPUBusy float64 `json:"nats_processes_cpu_busy_fraction"`
	// NATSSync is the nats-server processes' JetStream sync_interval.
	NATSSync string `json:"nats_sync_interval,omitempty"`

	TargetP99MS  float64 `json:"target_p99_ms"`
	MetTarget    bool    `json:"met_target"`
	GitLabPollMS float64 `json:"gitlab_runner_poll_interval_ms"`
}

func analyze(o options, samples []sample, pulls []pullSpan, wall, cpu time.Duration) result {
	r := result{
		Benchmark: fmt.Sprintf("dispatch latency at %d builds/s: %d simulated agents × %d slots, %s builds, %d repositories",
			o.rate, o.agents, o.slots, o.buildTime, o.repos),
		Measured: "per build, one clock in one process: from just before the client calls StartBuild (gRPC, loopback) " +
			"to the simulated agent's WorkOffer request being answered with the build",
		GoVersion: runtime.Version(), CPUs: cpus(), RatePerS: o.rate, DurationS: o.duration.Seconds(), WarmupS: o.warmup.Seconds(),
		Agents: o.agents, Slots: o.slots, BuildTimeMS: ms(o.buildTime), Repositories: o.repos, ContextFormat: o.format, FreshContexts: o.freshContexts,
		RouteDelayMS: ms(o.routeDelay), Offered: len(samples), TargetP99MS: o.targetMS, GitLabPollMS: gitlabPollMS,
		CPUBusy: cpu.Seconds() / wall.Seconds() / float64(cpus()),
	}
	var total, noWait, rt, lag, assign, gw, sched []float64
	byReason := map[string][]float64{}
	var first, lastIntended, lastReturned, lastReceived time.Time
	before := 0
	perAgent := map[string]int{}
	for i := range samples {
		s := &samples[i]
		if first.IsZero() {
			first = s.intended
		}
		lastIntended = s.intended
		lag = append(lag, ms(s.submitted.Sub(s.intended)))
		if s.err != nil {
			r.StartErrors++
			if r.FirstError == "" {
				r.FirstError = s.err.Error()
			}
			continue
		}
		rt = append(rt, ms(s.returned.Sub(s.submitted)))
		lastReturned = later(lastReturned, s.returned)
		if s.received.IsZero() {
			continue
		}
		r.Assigned++
		perAgent[s.agent]++
		lastReceived = later(lastReceived, s.received)
		d := ms(s.received.Sub(s.submitted))
		total = append(total, d)
		if !s.intake.IsZero() && s.pullSent.After(s.intake) {
			noWait = append(noWait, d-ms(s.pullSent.Sub(s.intake)))
		} else {
			noWait = append(noWait, d)
		}
		byReason[s.reason] = append(byReason[s.reason], d)
		if !s.intake.IsZero() {
			gw = append(gw, ms(s.intake.Sub(s.submitted)))
			sched = append(sched, ms(s.received.Sub(s.intake)))
		}
		if s.received.Before(s.returned) {
			before++
		}
		if !s.logged.IsZero() && !s.decided.IsZero() {
			assign = append(assign, ms(s.logged.Sub(s.decided)))
		}
	}
	r.Assign = distOf(assign)
	r.AssignBusy = busyFraction(samples)
	var claim, create, intake, cas []float64
	for i := range samples {
		s := &samples[i]
		add := func(xs *[]float64, from, to time.Time) {
			if !from.IsZero() && !to.IsZero() {
				*xs = append(*xs, ms(to.Sub(from)))
			}
		}
		add(&claim, s.claimSent, s.claimAcked)
		add(&create, s.createSent, s.createAcked)
		add(&intake, s.intake, s.intakeAcked)
		add(&cas, s.assignSent, s.assignAcked)
	}
	r.Writes = writeRTTs{distOf(claim), distOf(create), distOf(intake), distOf(cas)}
	var waited, idle []float64
	for i := range samples {
		s := &samples[i]
		if s.received.IsZero() || s.intake.IsZero() || !s.pullSent.After(s.intake) {
			continue
		}
		waited = append(waited, ms(s.pullSent.Sub(s.intake)))
		idle = append(idle, float64(idleElsewhere(pulls, s.agent, s.intake)))
	}
	r.Waited, r.WaitedFor = len(waited), distOf(waited)
	if len(idle) > 0 {
		r.IdleElsewhere.Median, r.IdleElsewhere.Min = distOf(idle).P50, slices.Min(idle)
	}
	r.Latency, r.NoWait, r.StartBuild = distOf(total), distOf(noWait), distOf(rt)
	r.Gateway, r.Scheduler = distOf(gw), distOf(sched)
	r.GenLagP99MS = distOf(lag).P99
	if r.Assigned > 0 {
		r.BeforeReturn = float64(before) / float64(r.Assigned)
	}
	interval := time.Second / time.Duration(o.rate)
	if !first.IsZero() {
		r.OfferedPerS = float64(len(samples)) / lastIntended.Sub(first.Add(-interval)).Seconds()
		r.StartedPerS = float64(len(rt)) / lastReturned.Sub(first.Add(-interval)).Seconds()
		window := lastReceived.Sub(first.Add(-interval))
		r.AssignedPerS = float64(r.Assigned) / window.Seconds()
		r.AssignBusy /= window.Seconds()
		counts := make([]float64, 0, o.agents)
		for _, c := range perAgent {
			counts = append(counts, float64(c)/window.Seconds())
		}
		r.IdleAgents = o.agents - len(counts)
		for len(counts) < o.agents {
			counts = append(counts, 0)
		}
		d := distOf(counts)
		r.AgentBuildsPerS.Min, r.AgentBuildsPerS.Mean, r.AgentBuildsPerS.Max = slices.Min(counts), d.Mean, d.Max
	}
	r.ByReason = map[string]dist{}
	for reason, xs := range byReason {
		r.ByReason[reason] = distOf(xs)
	}
	for _, seg := range segments {
		var xs, tail []float64
		for i := range samples {
			s := &samples[i]
			d, ok := seg.of(s)
			if !ok || s.err != nil {
				continue
			}
			xs = append(xs, ms(d))
			if !s.received.IsZero() && ms(s.received.Sub(s.submitted)) >= r.Latency.P99 {
				tail = append(tail, ms(d))
			}
		}
		seg.Dist = distOf(xs)
		seg.TailMeanMS = distOf(tail).Mean
		r.Segments = append(r.Segments, seg)
	}
	r.MetTarget = r.Assigned > 0 && r.Latency.P99 < o.targetMS && r.StartErrors == 0
	return r
}

// busyFraction is how long, in seconds, some build was between the
// dispatcher's decision and its "build assigned" log: the union of those
// spans, since one routing pass writes its assignments together.
func busyFraction(samples []sample) float64 {
	type span struct{ from, to time.Time }
	var spans []span
	for i := range samples {
		if s := &samples[i]; !s.decided.IsZero() && s.logged.After(s.decided) {
			spans = append(spans, span{s.decided, s.logged})
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
	var busy time.Duration
	var end time.Time
	for _, sp := range spans {
		if sp.from.After(end) {
			busy += sp.to.Sub(sp.from)
			end = sp.to
		} else if sp.to.After(end) {
			busy += sp.to.Sub(end)
			end = sp.to
		}
	}
	return busy.Seconds()
}

// times says how v compares with ref: "1/40 of", "1.5× of".
func times(v, ref float64) string {
	if v <= 0 {
		return "n/a"
	}
	if v < ref {
		return fmt.Sprintf("%.2f ms, 1/%.0f of", v, ref/v)
	}
	return fmt.Sprintf("%.2f ms, %.1f× of", v, v/ref)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func row(name string, d dist, extra string) benchkit.Row {
	f := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	return benchkit.Row{Name: name, Values: []string{fmt.Sprint(d.N), f(d.P50), f(d.P90), f(d.P99), f(d.Max), extra}}
}

func report(o options, r result) error {
	rows := []benchkit.Row{
		row("**submit → agent has the build**", r.Latency, ""),
		row("submit → agent, minus waiting for its agent", r.NoWait, ""),
		row("gateway's part: submit → kiln.requests", r.Gateway, ""),
		row("scheduler's part: kiln.requests → agent", r.Scheduler, ""),
		row("StartBuild round trip (client)", r.StartBuild, ""),
	}
	for _, seg := range r.Segments {
		rows = append(rows, row("· "+seg.Name, seg.Dist, fmt.Sprintf("%.2f", seg.TailMeanMS)))
	}
	rows = append(rows,
		row("dispatcher.assign per build (CAS, reply, event)", r.Assign, ""),
		row("write: in-flight claim, published → acked", r.Writes.Claim, ""),
		row("write: record create, published → acked", r.Writes.Create, ""),
		row("write: kiln.requests, published → acked", r.Writes.Intake, ""),
		row("write: CAS to ASSIGNED, published → acked", r.Writes.Assign, ""),
		row("one KV Get round trip (probe, every 10 ms)", r.KVRead, ""),
		row("one KV Put round trip (probe, every 10 ms)", r.KVWrite, ""),
		row("one 300-byte write + fsync beside the store (probe)", r.Fsync, ""))
	for _, reason := range []string{"affinity", "hashed", "spilled", "other", "unknown"} {
		if d, ok := r.ByReason[reason]; ok {
			rows = append(rows, row("submit → agent, routed "+reason, d, ""))
		}
	}
	verdict := "MET"
	if !r.MetTarget {
		verdict = "MISSED"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "p99 %.2f ms, target < %.0f ms: %s. Offered %.1f builds/s, started %.1f/s, assigned %.1f/s "+
		"(%d offered, %d start errors, %d unassigned at the end; at most %d StartBuild calls in flight; generator lag p99 %.2f ms; "+
		"CPU %.0f%% of %d cores for NATS, gateway, scheduler, agents and load together; "+
		"some task waited for a CPU %.0f%% of the time).\n",
		r.Latency.P99, r.TargetP99MS, verdict, r.OfferedPerS, r.StartedPerS, r.AssignedPerS,
		r.Offered, r.StartErrors, r.Unassigned, r.MaxInFlight, r.GenLagP99MS, 100*r.CPUBusy, r.CPUs, 100*r.CPUPressure)
	fmt.Fprintf(&b, "The gateway's part (submit → kiln.requests) was p50 %.2f ms, p99 %.2f ms; the scheduler's (kiln.requests → agent) p50 %.2f ms, p99 %.2f ms.\n",
		r.Gateway.P50, r.Gateway.P99, r.Scheduler.P50, r.Scheduler.P99)
	b.WriteString(pathWrites(r))
	fmt.Fprintf(&b, "Some assignment was on its way (decision → \"build assigned\" logged) %.0f%% of the period; their writes overlap and do not hold up the dispatcher.\n", 100*r.AssignBusy)
	fmt.Fprintf(&b, "Builds per agent: %.1f/s on average, %.1f–%.1f/s from the least to the busiest (%d slots, %s builds each); %d of %d agents got none.\n",
		r.AgentBuildsPerS.Mean, r.AgentBuildsPerS.Min, r.AgentBuildsPerS.Max, r.Slots, o.buildTime, r.IdleAgents, r.Agents)
	if r.Waited > 0 {
		fmt.Fprintf(&b, "%d builds (%.1f%%) waited for a slot on the agent they went to (p50 %.1f ms, max %.1f ms) while other agents had %.0f free slots (median; min %.0f).\n",
			r.Waited, 100*float64(r.Waited)/float64(max(r.Assigned, 1)), r.WaitedFor.P50, r.WaitedFor.Max, r.IdleElsewhere.Median, r.IdleElsewhere.Min)
	}
	fmt.Fprintf(&b, "GitLab runners poll for jobs every %.0f s, so a job waits 0–%.0f ms (%.0f ms on average) before a runner even sees it; "+
		"kiln's p50 is %s and its p99 %s that average.\n",
		r.GitLabPollMS/1000, r.GitLabPollMS, r.GitLabPollMS/2, times(r.Latency.P50, r.GitLabPollMS/2), times(r.Latency.P99, r.GitLabPollMS/2))
	fmt.Fprintf(&b, "%.0f%% of builds reached their agent before StartBuild returned to the client.", 100*r.BeforeReturn)
	if r.FirstError != "" {
		fmt.Fprintf(&b, "\nFirst StartBuild error: %s", r.FirstError)
	}
	if !r.MetTarget && len(r.Segments) > 0 {
		worst := r.Segments[0]
		for _, seg := range r.Segments[1:] {
			if seg.TailMeanMS > worst.TailMeanMS {
				worst = seg
			}
		}
		fmt.Fprintf(&b, "\nWhere the slowest 1%% spent their time (last column): mostly %q (%.2f ms on average; %s).",
			worst.Name, worst.TailMeanMS, worst.What)
		switch worst.Name {
		case "waiting for its agent":
			fmt.Fprintf(&b, " The router held them for their busy preferred agent (waiting cheaper than a cache miss by their lineage's costs, or delay scheduling up to -route-delay %s) "+
				"while other agents had %.0f free slots (median); -route-delay 1ms shows the latency without holds.", o.routeDelay, r.IdleElsewhere.Median)
		case "dispatcher":
			fmt.Fprintf(&b, " The dispatcher is one goroutine; some assignment was on its way %.0f%% of the period.", 100*r.AssignBusy)
		}
	}
	contexts := r.ContextFormat + " contexts uploaded once per repository"
	if r.FreshContexts {
		contexts = "a new " + r.ContextFormat + " context (one file changed) uploaded before each build, untimed"
	}
	return benchkit.Report(
		fmt.Sprintf("Dispatch latency (%s): %d builds/s for %s, %d agents × %d slots, %s builds, %d repositories, %s",
			"submit → agent, in-process, one clock", r.RatePerS, o.duration, r.Agents, r.Slots, o.buildTime, r.Repositories, contexts),
		[]string{"segment", "builds", "p50 ms", "p90 ms", "p99 ms", "max ms", "slowest 1%: mean ms"},
		rows, b.String(), r, o.out)
}

// pathWrites says what the quorum writes on the path cost and how many
// writes a build makes in each stream.
func pathWrites(r result) string {
	w := r.Writes
	var b strings.Builder
	fmt.Fprintf(&b, "The path's quorum writes, one after another (published → acknowledged): in-flight claim p50 %.2f / p99 %.2f ms, record %.2f / %.2f, kiln.requests %.2f / %.2f, CAS to ASSIGNED %.2f / %.2f; "+
		"their p50s add up to %.2f ms. A 300-byte write + fsync beside the store took p50 %.2f / p99 %.2f ms (each JetStream write fsyncs its raft log and its store, on every replica, with sync_interval always).\n",
		w.Claim.P50, w.Claim.P99, w.Create.P50, w.Create.P99, w.Intake.P50, w.Intake.P99, w.Assign.P50, w.Assign.P99,
		w.Claim.P50+w.Create.P50+w.Intake.P50+w.Assign.P50, r.Fsync.P50, r.Fsync.P99)
	if len(r.WritesPerBuild) > 0 {
		names := make([]string, 0, len(r.WritesPerBuild))
		for name := range r.WritesPerBuild {
			names = append(names, name)
		}
		slices.SortFunc(names, func(a, b string) int { return cmpFloat(r.WritesPerBuild[b], r.WritesPerBuild[a]) })
		b.WriteString("Writes per build by stream:")
		for i, name := range names {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, " %s %.1f", name, r.WritesPerBuild[name])
		}
		b.WriteString(" (KV_KILN_IDEMPOTENCY: the round-trip probe; KV_KILN_AGENTS: heartbeats).\n")
	}
	return b.String()
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// hopTable is the runs' hops side by side, p50 / p99 ms, as markdown.
func hopTable(runs []result) string {
	var b strings.Builder
	b.WriteString("| hop, p50 / p99 ms |")
	for _, r := range runs {
		fmt.Fprintf(&b, " %s, %d/s |", farmName(r), r.RatePerS)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(runs)) + "\n")
	line := func(name string, of func(r result) dist) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, r := range runs {
			d := of(r)
			fmt.Fprintf(&b, " %.1f / %.1f |", d.P50, d.P99)
		}
		b.WriteString("\n")
	}
	line("**submit → agent has the build**", func(r result) dist { return r.Latency })
	line("minus waiting for its agent", func(r result) dist { return r.NoWait })
	for i, seg := range segments {
		line(seg.Name, func(r result) dist {
			if i < len(r.Segments) {
				return r.Segments[i].Dist
			}
			return dist{}
		})
	}
	line("(write) in-flight claim", func(r result) dist { return r.Writes.Claim })
	line("(write) record create", func(r result) dist { return r.Writes.Create })
	line("(write) kiln.requests", func(r result) dist { return r.Writes.Intake })
	line("(write) CAS to ASSIGNED", func(r result) dist { return r.Writes.Assign })
	line("(probe) KV put", func(r result) dist { return r.KVWrite })
	line("(probe) write + fsync", func(r result) dist { return r.Fsync })
	return b.String()
}

// farmName names a run's NATS: "1 node" or "3 nodes R3".
func farmName(r result) string {
	name := "in-process NATS"
	switch {
	case r.NATSNodes == 1:
		name = "1 node"
	case r.NATSNodes > 1:
		name = fmt.Sprintf("%d nodes R%d", r.NATSNodes, r.Replicas)
	}
	if r.NATSNodes > 0 && r.NATSSync != "always" {
		name += ", sync " + r.NATSSync
	}
	return name
}

// worstTail is the segment where the slowest 1% spent most of their time.
func worstTail(r result) segment {
	var worst segment
	for _, seg := range r.Segments {
		if seg.TailMeanMS > worst.TailMeanMS {
			worst = seg
		}
	}
	return worst
}

// clusterResult is the JSON of a -cluster run.
type clusterResult struct {
	Benchmark   string   `json:"benchmark"`
	Measured    string   `json:"measured"`
	GoVersion   string   `json:"go_version"`
	CPUs        int      `json:"cpus"`
	TargetP99MS float64  `json:"target_p99_ms"`
	Runs        []result `json:"runs"`
	// CeilingPerS is, per farm, the most builds/s assigned in any run.
	CeilingPerS map[string]float64 `json:"assigned_per_s_ceiling"`
}

// clusterReport prints the runs of -cluster side by side and writes them
// as one JSON document.
func clusterReport(o options, runs []result) error {
	f := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	var rows []benchkit.Row
	ceiling := map[string]float64{}
	var b strings.Builder
	for _, r := range runs {
		name := farmName(r)
		ceiling[name] = max(ceiling[name], r.AssignedPerS)
		verdict := "met"
		if !r.MetTarget {
			verdict = "MISSED"
		}
		rows = append(rows, benchkit.Row{Name: fmt.Sprintf("%s, %d/s", name, r.RatePerS), Values: []string{
			fmt.Sprintf("%.0f", r.OfferedPerS), fmt.Sprintf("%.0f", max(r.AssignedPerS, 0)), fmt.Sprint(r.Unassigned + r.StartErrors),
			f(r.Latency.P50), f(r.Latency.P90), f(r.Latency.P99), f(r.Latency.Max),
			f(r.NoWait.P99), f(r.Writes.Claim.P50 + r.Writes.Create.P50 + r.Writes.Intake.P50 + r.Writes.Assign.P50), f(r.Fsync.P50) + " / " + f(r.Fsync.P99),
			fmt.Sprintf("%.0f%% + %.0f%%", 100*r.CPUBusy, 100*r.NATSCPUBusy), verdict,
		}})
		worst := worstTail(r)
		fmt.Fprintf(&b, "- %s at %d/s: p50 %.2f ms, p99 %.2f ms (target < %.0f ms: %s); assigned %.0f of %.0f offered/s, %d start errors, %d unassigned at the end; "+
			"the slowest 1%% spent most in %q (%.2f ms mean); KV put p99 %.2f ms, get p99 %.2f ms; "+
			"CPU: this process (gateway, scheduler, agents, load) %.0f%%, NATS %.0f%% of %d cores; some task waited for a CPU %.0f%% of the time.\n",
			name, r.RatePerS, r.Latency.P50, r.Latency.P99, r.TargetP99MS, verdict, max(r.AssignedPerS, 0), r.OfferedPerS, r.StartErrors, r.Unassigned,
			worst.Name, worst.TailMeanMS, r.KVWrite.P99, r.KVRead.P99,
			100*r.CPUBusy, 100*r.NATSCPUBusy, r.CPUs, 100*r.CPUPressure)
		fmt.Fprintf(&b, "  %s", pathWrites(r))
	}
	var names []string
	for _, r := range runs {
		if name := farmName(r); !slices.Contains(names, name) {
			names = append(names, name)
			fmt.Fprintf(&b, "Ceiling on %s: %.0f builds/s assigned at most", name, ceiling[name])
			if r := busiest(runs, name); r != nil {
				if stream, per := hottestStream(*r); per > 0 {
					fmt.Fprintf(&b, "; at %d/s offered its busiest stream, %s, took %.1f writes per build (%.0f/s)", r.RatePerS, stream, per, per*r.AssignedPerS)
					if r.NATSNodes == 1 && r.Fsync.Mean > 0 {
						fmt.Fprintf(&b, ": one node stores a stream's writes one at a time, each fsynced (%.2f ms mean in the probe), so that stream alone caps at ~%.0f writes/s, ~%.0f builds/s",
							r.Fsync.Mean, 1000/r.Fsync.Mean, 1000/r.Fsync.Mean/per)
					}
				}
			}
			b.WriteString(".\n")
		}
	}
	contended := 0.0
	for _, r := range runs {
		contended = max(contended, r.CPUPressure)
	}
	b.WriteString("\nWhere the time goes, hop by hop (they add up to submit → agent; the writes below are the hops' quorum writes alone):\n\n")
	b.WriteString(hopTable(runs))
	if contended > 0.5 {
		fmt.Fprintf(&b, "\nThe machine was contended: some task waited for a CPU up to %.0f%% of a run's time, so these latencies and ceilings are the farm's under that contention, not its own.\n", 100*contended)
	}
	return benchkit.Report(
		fmt.Sprintf("Dispatch latency by NATS farm (nats-server processes: sync_interval %s): %s per run after %s warm-up, %d agents × %d slots, %s builds",
			o.natsSync, o.duration, o.warmup, o.agents, o.slots, o.buildTime),
		[]string{"farm, offered", "offered/s", "assigned/s", "lost", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 w/o agent wait", "4 path writes, p50 sum", "fsync p50 / p99", "CPU bench + NATS", "p99 target"},
		rows, b.String(), clusterResultOf(o, runs), o.out)
}

// busiest is the run on the farm called name that assigned the most
// builds/s, nil if none.
func busiest(runs []result, name string) *result {
	var best *result
	for i := range runs {
		if r := &runs[i]; farmName(*r) == name && (best == nil || r.AssignedPerS > best.AssignedPerS) {
			best = r
		}
	}
	return best
}

// hottestStream is the stream of kiln's own writes that took the most
// writes per build in r (the probes' bucket left out).
func hottestStream(r result) (string, float64) {
	var name string
	var most float64
	for stream, per := range r.WritesPerBuild {
		if stream != "KV_KILN_IDEMPOTENCY" && per > most {
			name, most = stream, per
		}
	}
	return name, most
}

// clusterResultOf is the JSON document of runs.
func clusterResultOf(o options, runs []result) clusterResult {
	ceiling := map[string]float64{}
	for _, r := range runs {
		ceiling[farmName(r)] = max(ceiling[farmName(r)], r.AssignedPerS)
	}
	return clusterResult{
		Benchmark: fmt.Sprintf("dispatch latency on NATS as separate processes, one node and a 3-node R3 cluster (JetStream file storage, sync_interval %s): %d simulated agents × %d slots, %s builds, %d repositories; gateway and scheduler in the benchmark's process",
			o.natsSync, o.agents, o.slots, o.buildTime, o.repos),
		Measured:  "per build, one clock in one process: from just before the client calls StartBuild to the simulated agent's WorkOffer being answered with it",
		GoVersion: runtime.Version(), CPUs: cpus(), TargetP99MS: o.targetMS, Runs: runs, CeilingPerS: ceiling,
	}
}

// writeJSON writes v as indented JSON to path.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
