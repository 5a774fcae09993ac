// Command affinity measures cache-affinity routing (issue 4): lineages of a
// Dockerfile with an expensive cacheable step, each rebuilt with a small
// code change, submitted wave by wave (wave k: revision k of every lineage
// at once) to a distributed farm — NATS, kiln-gateway, kiln-scheduler and
// one single-slot kiln-agent per engine — through the kiln CLI. The
// Dockerfile is the issue's: the expensive step, then the changing COPY
// (-tail run adds a RUN after the COPY to every other lineage). The
// expensive step takes ~2 s on this machine when it is idle: -step cpu
// hashes zeros, as a compile or install step burns CPU, with the amount
// calibrated before the run; -step sleep waits 2 s, which costs a busy
// machine nothing but the engine's slot. Each
// configuration runs on fresh engines (cold caches), all of them up at
// once, their waves taking turns so that the machine's load, which other
// work changes over a run, falls on each alike:
//
//   - kiln affinity: three engines, the scheduler routes;
//   - round-robin: three engines, build i (in submission order) pinned to
//     engine i mod 3 with --agent-label, as a round-robin balancer would;
//   - oracle: one engine runs every build, the most cache hits possible.
//
// It reports each one's cached-step ratio (kiln.cache.cached over
// kiln.cache.steps from the metadata files), its makespan (the sum of its
// waves, each from its first submission to its last completion), and
// affinity/oracle cached ratio (target ≥ 0.95) and affinity/round-robin
// makespan (target ≤ 0.5). It also reports, beside the target, the makespan
// of the rebuild waves alone: the first wave is cold builds everywhere, the
// same work whatever the routing.
//
// Round-robin is fair to its engines' caches: an engine keeps what it built,
// so as waves pass every engine comes to hold every lineage's expensive
// step and round-robin hits the cache more and more often.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	"github.com/kilnbuild/kiln/scheduler"
)

const (
	targetCachedRatio   = 0.95
	targetMakespanRatio = 0.5
)

// options are the benchmark's flags.
type options struct {
	lineages, rebuilds, engines int
	slots                       int
	order, step, tail           string
	seed                        uint64
	routeDelay                  string
	progress                    string
	binDir, out                 string
	keep                        bool
}

type report struct {
	Benchmark             string    `json:"benchmark"`
	Engine                string    `json:"engine"`
	Base                  string    `json:"base"`
	Lineages              int       `json:"lineages"`
	Revisions             int       `json:"revisions"`
	Engines               int       `json:"engines"`
	Slots                 int       `json:"slots_per_agent"`
	Order                 string    `json:"order"`
	Step                  string    `json:"expensive_step"`
	StepBytes             int64     `json:"expensive_step_bytes_hashed,omitempty"`
	StepSeconds           float64   `json:"expensive_step_seconds_idle"`
	Tail                  string    `json:"after_copy"`
	Seed                  uint64    `json:"seed"`
	RouteDelay            string    `json:"route_delay"`
	AffinityOverOracle    float64   `json:"affinity_over_oracle_cached_ratio"`
	AffinityOverRR        float64   `json:"affinity_over_round_robin_makespan"`
	RebuildsOverRR        float64   `json:"affinity_over_round_robin_rebuilds_makespan"`
	TargetCachedRatio     float64   `json:"target_affinity_over_oracle_cached_ratio"`
	TargetMakespanRatio   float64   `json:"target_affinity_over_round_robin_makespan"`
	RunSeconds            float64   `json:"run_seconds"`
	Configurations        []*result `json:"configurations"`
	SubmissionOrderByWave [][]int   `json:"submission_order_by_wave"`
}

func main() {
	var o options
	flag.IntVar(&o.lineages, "lineages", 12, "lineages (repositories), each with its own Dockerfile")
	flag.IntVar(&o.rebuilds, "rebuilds", 8, "rebuilds of each lineage after its first build, one small change each")
	flag.IntVar(&o.engines, "engines", 3, "engines (one single-slot agent each) for affinity and round-robin")
	flag.IntVar(&o.slots, "slots", 1, "slots of each engine's kiln-agent (builds it runs at once)")
	flag.StringVar(&o.order, "order", "shuffled", "order each wave submits its lineages in: shuffled (seeded, as concurrent CI jobs arrive) or fixed (lineage 0 first)")
	flag.Uint64Var(&o.seed, "seed", 4, "seed of the shuffled submission order")
	flag.StringVar(&o.step, "step", "cpu", "the expensive cacheable step: cpu (hashing zeros, calibrated to take ~2 s on this machine when idle, as a compile or install step burns CPU) or sleep (2 s of waiting, no work)")
	flag.StringVar(&o.tail, "tail", "none", "after the changing COPY: none (the issue's workload) or run (every other lineage runs `wc -c` on the changed file, a container start per rebuild)")
	flag.StringVar(&o.routeDelay, "route-delay", scheduler.DefaultRouteDelay.String(), "kiln-scheduler --route-delay: how long a build waits for the busy agent holding its cache")
	flag.StringVar(&o.progress, "progress", "quiet", "kiln build --progress; with -keep, each build's output is in builds/<lineage>-<revision>.log (plain shows where and why the scheduler placed it)")
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding kiln, kiln-gateway, kiln-scheduler and kiln-agent (make build)")
	flag.StringVar(&o.out, "out", "bench/results/affinity.json", "where to write the JSON report")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (farm logs, contexts, metadata files)")
	flag.Parse()
	if o.lineages < 1 || o.rebuilds < 0 || o.engines < 1 || o.slots < 1 || (o.order != "shuffled" && o.order != "fixed") || (o.step != "cpu" && o.step != "sleep") || (o.tail != "none" && o.tail != "run") {
		fmt.Fprintln(os.Stderr, "affinity: need -lineages ≥ 1, -rebuilds ≥ 0, -engines ≥ 1, -order shuffled|fixed, -step cpu|sleep, -tail none|run")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "affinity:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) (err error) {
	began := time.Now()
	tmp, err := os.MkdirTemp("", "kiln-bench-affinity-")
	if err != nil {
		return err
	}
	if o.keep {
		defer logf("working directory kept: %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	step, stepBytes, stepTook, err := expensiveStep(o.step)
	if err != nil {
		return err
	}
	logf("expensive step: %s (%.2f s here, idle)", step, stepTook)
	w := &workload{base: enginetest.BusyboxRef(), step: step, tailRun: o.tail == "run"}
	for l := range o.lineages {
		w.lineages = append(w.lineages, fmt.Sprintf("lineage-%02d", l))
	}
	rng := rand.New(rand.NewPCG(o.seed, 0))
	for range o.rebuilds + 1 {
		order := make([]int, o.lineages)
		for i := range order {
			order[i] = i
		}
		if o.order == "shuffled" {
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		w.order = append(w.order, order)
	}
	configs := []configuration{
		{name: "kiln affinity", key: "aff", engines: o.engines},
		{name: "round-robin", key: "rr", engines: o.engines, roundRobin: true},
		{name: "oracle (one engine)", key: "orc", engines: 1},
	}
	r := report{
		Benchmark: fmt.Sprintf("%d lineages × %d revisions (1 build + %d rebuilds), one small change each, expensive step %q (%.1f s here when idle), fresh engines per configuration, waves interleaved",
			o.lineages, o.rebuilds+1, o.rebuilds, w.step, stepTook),
		Engine: benchkit.EngineVersion(), Base: w.base, Lineages: o.lineages, Revisions: o.rebuilds + 1, Engines: o.engines, Slots: o.slots,
		Order: o.order, Step: w.step, StepBytes: stepBytes, StepSeconds: stepTook, Tail: o.tail, Seed: o.seed, RouteDelay: o.routeDelay, SubmissionOrderByWave: w.order,
		TargetCachedRatio: targetCachedRatio, TargetMakespanRatio: targetMakespanRatio,
	}
	// Every configuration's farm is up for the whole run, and their waves
	// take turns (wave k of each, the first of the turn rotating), so a
	// change in the machine's load during the run falls on all of them.
	runs := make([]*farmRun, len(configs))
	defer func() {
		for _, ru := range runs {
			if ru != nil {
				err = errors.Join(err, ru.stop())
			}
		}
	}()
	for i, c := range configs {
		dir := filepath.Join(tmp, c.key)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if runs[i], err = startRun(ctx, o, w, c, dir); err != nil {
			return err
		}
	}
	for k := range w.order {
		for j := range runs {
			if err := runs[(k+j)%len(runs)].wave(ctx, o, w, k); err != nil {
				return err
			}
		}
	}
	for _, ru := range runs {
		res, err := ru.finish()
		if err != nil {
			return err
		}
		r.Configurations = append(r.Configurations, res)
	}
	aff, rr, oracle := r.Configurations[0], r.Configurations[1], r.Configurations[2]
	r.AffinityOverOracle = aff.CachedRatio / oracle.CachedRatio
	r.AffinityOverRR = aff.MakespanMS / rr.MakespanMS
	if rr.RebuildsMS > 0 {
		r.RebuildsOverRR = aff.RebuildsMS / rr.RebuildsMS
	}
	r.RunSeconds = time.Since(began).Seconds()

	var rows []benchkit.Row
	for _, c := range r.Configurations {
		rows = append(rows, benchkit.Row{Name: c.Name, Values: []string{
			fmt.Sprintf("%d", c.Engines),
			fmt.Sprintf("%d/%d", c.Cached, c.Steps),
			fmt.Sprintf("%.3f", c.CachedRatio),
			fmt.Sprintf("%.3f", c.RebuildRatio),
			fmt.Sprintf("%.1f", c.MakespanMS/1000),
			fmt.Sprintf("%.1f", c.RebuildsMS/1000),
			reasons(c.Reasons),
			fmt.Sprintf("%d", c.MultiHome),
		}})
	}
	return benchkit.Report(
		fmt.Sprintf("%s (engine %s, %s submission order, route delay %s)", r.Benchmark, r.Engine, o.order, r.RouteDelay),
		[]string{"configuration", "engines", "cached/steps", "cached ratio", "rebuilds' cached ratio", "makespan s", "rebuilds' makespan s", "assignments", "lineages on >1 engine"},
		rows,
		fmt.Sprintf("affinity/oracle cached ratio = %.3f (target ≥ %.2f: %s); affinity/round-robin makespan = %.2f (target ≤ %.1f: %s); "+
			"rebuild waves alone (first builds left out; not the target's measure) %.2f; run took %.0f s",
			r.AffinityOverOracle, targetCachedRatio, met(r.AffinityOverOracle >= targetCachedRatio),
			r.AffinityOverRR, targetMakespanRatio, met(r.AffinityOverRR <= targetMakespanRatio), r.RebuildsOverRR, r.RunSeconds),
		r, o.out)
}

// reasons formats the scheduler's assignment reasons, e.g. "affinity 96,
// hashed 12".
func reasons(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}
