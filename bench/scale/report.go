package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
)

// result is the JSON report.
type result struct {
	Agents       int     `json:"agents"`
	Slots        int     `json:"slots_per_agent"`
	Rate         int     `json:"builds_per_second"`
	Lineages     int     `json:"lineages"`
	BuildTimeMS  float64 `json:"build_time_ms"`
	DurationS    float64 `json:"measured_seconds"`
	CPUs         int     `json:"cpus"`
	Submitted    int64   `json:"builds_submitted_measured"`
	Builds       int     `json:"builds_measured"`
	Unassigned   int     `json:"unassigned"`
	SubmitErrors int64   `json:"submit_errors"`
	// CPUPressure is the share of the measured span in which some task
	// on the machine waited for a CPU (other processes included).
	CPUPressure   float64 `json:"cpu_pressure"`
	HeartbeatsPS  float64 `json:"heartbeat_kv_writes_per_second"`
	PullsPS       float64 `json:"pulls_returned_per_second"`
	DispatchP50MS float64 `json:"dispatch_p50_ms"`
	DispatchP90MS float64 `json:"dispatch_p90_ms"`
	DispatchP99MS float64 `json:"dispatch_p99_ms"`
	DispatchMaxMS float64 `json:"dispatch_max_ms"`
	// The latency split where the intake message was acknowledged (the
	// gateway's part: record, event, intake message; then the scheduler's
	// and the agent's), over the builds assigned after that ack.
	IntakeP50MS      float64 `json:"intake_p50_ms"`
	IntakeP99MS      float64 `json:"intake_p99_ms"`
	AfterIntakeP50MS float64 `json:"after_intake_p50_ms"`
	AfterIntakeP99MS float64 `json:"after_intake_p99_ms"`
	// The scheduler and NATS run as processes of their own, measured by
	// /proc/<pid>; the benchmark process holds the agents and the load.
	SchedulerCPUSeconds  float64 `json:"scheduler_cpu_seconds"`
	SchedulerCPUPerSec   float64 `json:"scheduler_cpu_per_second"`
	SchedulerRSSMiB      float64 `json:"scheduler_rss_mib"`
	SchedulerPeakRSSMiB  float64 `json:"scheduler_peak_rss_mib"`
	NATSCPUPerSec        float64 `json:"nats_cpu_per_second"`
	NATSRSSMiB           float64 `json:"nats_rss_mib"`
	NATSPeakRSSMiB       float64 `json:"nats_peak_rss_mib"`
	AgentsProcCPUPerSec  float64 `json:"agents_process_cpu_per_second"`
	AgentsProcRSSMiB     float64 `json:"agents_process_rss_mib"`
	TargetP99MS          float64 `json:"target_dispatch_p99_ms"`
	TargetRSSMiB         float64 `json:"target_scheduler_rss_mib"`
	MeetsDispatchTarget  bool    `json:"meets_dispatch_target"`
	MeetsSchedulerTarget bool    `json:"meets_scheduler_rss_target"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

func report(o options, rec *recorder, m0, m1 measurement, unassigned int) error {
	rec.mu.Lock()
	lat := slices.Clone(rec.latencies)
	in, after := slices.Clone(rec.intake), slices.Clone(rec.afterIntake)
	rec.mu.Unlock()
	slices.Sort(lat)
	slices.Sort(in)
	slices.Sort(after)
	secs := m1.at.Sub(m0.at).Seconds()
	r := result{
		Agents: o.agents, Slots: o.slots, Rate: o.rate, Lineages: o.lineages, BuildTimeMS: ms(o.buildTime), DurationS: secs, CPUs: runtime.NumCPU(),
		Submitted: rec.submittedM.Load(), Builds: len(lat), Unassigned: unassigned, SubmitErrors: rec.submitErr.Load(),
		HeartbeatsPS:  float64(m1.agentsSeq-m0.agentsSeq) / secs,
		PullsPS:       float64(rec.pullsM.Load()) / secs,
		DispatchP50MS: ms(percentile(lat, 0.50)), DispatchP90MS: ms(percentile(lat, 0.90)),
		DispatchP99MS: ms(percentile(lat, 0.99)), DispatchMaxMS: ms(percentile(lat, 1)),
		IntakeP50MS: ms(percentile(in, 0.50)), IntakeP99MS: ms(percentile(in, 0.99)),
		AfterIntakeP50MS: ms(percentile(after, 0.50)), AfterIntakeP99MS: ms(percentile(after, 0.99)),
		SchedulerCPUSeconds: (m1.sched.CPU - m0.sched.CPU).Seconds(),
		SchedulerCPUPerSec:  (m1.sched.CPU - m0.sched.CPU).Seconds() / secs,
		SchedulerRSSMiB:     mib(m1.sched.RSS), SchedulerPeakRSSMiB: mib(m1.sched.HWM),
		NATSCPUPerSec: (m1.nats.CPU - m0.nats.CPU).Seconds() / secs,
		NATSRSSMiB:    mib(m1.nats.RSS), NATSPeakRSSMiB: mib(m1.nats.HWM),
		AgentsProcCPUPerSec: (m1.self.CPU - m0.self.CPU).Seconds() / secs, AgentsProcRSSMiB: mib(m1.self.RSS),
		TargetP99MS: o.targetP99MS, TargetRSSMiB: o.targetRSSMiB,
	}
	r.CPUPressure = -1
	if m0.cpuWait >= 0 && m1.cpuWait >= 0 {
		r.CPUPressure = float64(m1.cpuWait-m0.cpuWait) / 1e6 / secs
	}
	if e := rec.firstErr.Load(); e != nil {
		fmt.Fprintf(os.Stderr, "scale: %d submissions failed; the first: %v\n", r.SubmitErrors, *e)
	}
	r.MeetsDispatchTarget = r.DispatchP99MS < o.targetP99MS && unassigned == 0 && r.Builds > 0
	r.MeetsSchedulerTarget = r.SchedulerPeakRSSMiB < o.targetRSSMiB
	f1 := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	f2 := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	rows := []benchkit.Row{
		{Name: "heartbeat KV writes/s", Values: []string{f1(r.HeartbeatsPS), fmt.Sprintf("%d agents / %s, + one per finished build", o.agents, heartbeatEvery)}},
		{Name: "pulls returned/s", Values: []string{f1(r.PullsPS), "empty pulls after " + pollWait.String() + " plus one per build"}},
		{Name: "dispatch p50 (ms)", Values: []string{f2(r.DispatchP50MS), "submit → the agent's pull answered"}},
		{Name: "dispatch p90 (ms)", Values: []string{f2(r.DispatchP90MS), ""}},
		{Name: "dispatch p99 (ms)", Values: []string{f2(r.DispatchP99MS), fmt.Sprintf("target < %.0f", o.targetP99MS)}},
		{Name: "dispatch max (ms)", Values: []string{f2(r.DispatchMaxMS), ""}},
		{Name: "  intake p50 / p99 (ms)", Values: []string{f2(r.IntakeP50MS) + " / " + f2(r.IntakeP99MS), "record + event + intake message acknowledged (the gateway's writes)"}},
		{Name: "  after intake p50 / p99 (ms)", Values: []string{f2(r.AfterIntakeP50MS) + " / " + f2(r.AfterIntakeP99MS), "intake acked → assigned (scheduler, agent)"}},
		{Name: "scheduler CPU (s)", Values: []string{f2(r.SchedulerCPUSeconds), fmt.Sprintf("%.1f%% of a core over %.0f s", 100*r.SchedulerCPUPerSec, secs)}},
		{Name: "scheduler RSS (MiB)", Values: []string{f1(r.SchedulerRSSMiB), fmt.Sprintf("peak %.1f, target < %.0f", r.SchedulerPeakRSSMiB, o.targetRSSMiB)}},
		{Name: "NATS RSS (MiB)", Values: []string{f1(r.NATSRSSMiB), fmt.Sprintf("peak %.1f; %.1f%% of a core", r.NATSPeakRSSMiB, 100*r.NATSCPUPerSec)}},
		{Name: "agents + load process", Values: []string{f1(r.AgentsProcRSSMiB) + " MiB", fmt.Sprintf("%.1f%% of a core", 100*r.AgentsProcCPUPerSec)}},
	}
	summary := fmt.Sprintf("%d agents × %d slot(s), %d builds/s of %s each from %d lineages, %d builds measured over %.0f s on %d CPUs (%d unassigned, %d submit errors). "+
		"Scheduler and NATS are separate processes measured by /proc/<pid>; the agents and the load run in the benchmark process. "+
		"CPU pressure (some task waiting for a CPU, the whole machine): %.0f%% of the time. Dispatch target met: %v; scheduler RSS target met: %v.",
		o.agents, o.slots, o.rate, o.buildTime, o.lineages, r.Builds, secs, r.CPUs, unassigned, r.SubmitErrors, 100*r.CPUPressure, r.MeetsDispatchTarget, r.MeetsSchedulerTarget)
	return benchkit.Report("Scale: the control plane at fleet size", []string{"metric", "value", "note"}, rows, summary, r, o.out)
}
