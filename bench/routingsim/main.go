// Command routingsim measures kiln's router at farm scale: the pure
// routing.Index.Decide over 100 000 queued builds (2 000 lineages, 20
// tenants, ~64 chain hashes in each agent's cache summary) on 100, 1 000 and
// 10 000 agents. Each round some running builds finish, their agents pull
// again, the router decides, and the assignments are applied (agents' caches
// learn the lineages they built, the queue refills with fresh builds). It
// reports decision time per assignment, time per call, the cost of a call
// answering a single pull, the package-level Route (which re-indexes the
// agents on every call), allocations, heap, and where builds went (affinity,
// spilled, hashed), as a table and as JSON (bench/results/routingsim.json).
//
//	go run ./bench/routingsim
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	"github.com/kilnbuild/kiln/scheduler/routing"
)

const (
	slotsPerAgent  = 4
	summaryChains  = 64
	summaryLineage = 16
	summaryBases   = 8
	tenants        = 20
	baseImages     = 30
	targetUS       = 100.0
)

type sizeResult struct {
	Agents      int     `json:"agents"`
	Queued      int     `json:"queued"`
	Rounds      int     `json:"rounds"`
	Assignments int     `json:"assignments"`
	PerAssignUS float64 `json:"decide_us_per_assignment"`
	CallMedMS   float64 `json:"decide_ms_per_call_median"`
	CallMaxMS   float64 `json:"decide_ms_per_call_max"`
	PullMedMS   float64 `json:"single_pull_ms_median"`
	RouteUS     float64 `json:"route_us_per_assignment"`
	RouteCallMS float64 `json:"route_ms_per_call_median"`
	IndexMS     float64 `json:"new_index_ms"`
	AllocsPer   float64 `json:"allocs_per_assignment"`
	BytesPer    float64 `json:"bytes_per_assignment"`
	IndexMiB    float64 `json:"index_heap_mib"`
	HeapMiB     float64 `json:"heap_inuse_mib"`
	Affinity    float64 `json:"affinity_fraction"`
	Spilled     float64 `json:"spilled_fraction"`
	Hashed      float64 `json:"hashed_fraction"`
	MeanScore   float64 `json:"mean_score"`
	MeanBest    float64 `json:"mean_best_score"`
}

type report struct {
	Benchmark string       `json:"benchmark"`
	GoVersion string       `json:"go_version"`
	CPUs      int          `json:"cpus"`
	Lineages  int          `json:"lineages"`
	Finish    float64      `json:"finish_probability_per_round"`
	TargetUS  float64      `json:"target_us_per_assignment"`
	Sizes     []sizeResult `json:"sizes"`
}

func main() {
	sizes := flag.String("agents", "100,1000,10000", "agent counts to simulate")
	queued := flag.Int("builds", 100_000, "queued builds")
	lineages := flag.Int("lineages", 2000, "distinct lineages")
	rounds := flag.Int("rounds", 20, "routing rounds per size")
	finish := flag.Float64("finish", 0.1, "probability that a running build finishes in a round")
	out := flag.String("out", "bench/results/routingsim.json", "where to write the JSON report")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "routingsim:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	r := report{
		Benchmark: "cache-affinity routing at scale (routing.Index.Decide)",
		GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Lineages: *lineages, Finish: *finish, TargetUS: targetUS,
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintln(os.Stderr, "routingsim: bad -agents:", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "simulating %d agents, %d queued builds...\n", n, *queued)
		r.Sizes = append(r.Sizes, simulate(n, *queued, *lineages, *rounds, *finish))
	}
	var rows []benchkit.Row
	for _, s := range r.Sizes {
		rows = append(rows, benchkit.Row{Name: strconv.Itoa(s.Agents), Values: []string{
			strconv.Itoa(s.Queued), strconv.Itoa(s.Assignments),
			fmt.Sprintf("%.1f", s.PerAssignUS), fmt.Sprintf("%.1f", s.CallMedMS), fmt.Sprintf("%.2f", s.PullMedMS),
			fmt.Sprintf("%.1f", s.RouteUS), fmt.Sprintf("%.1f", s.IndexMS),
			fmt.Sprintf("%.1f", s.AllocsPer), fmt.Sprintf("%.0f", s.BytesPer), fmt.Sprintf("%.1f", s.IndexMiB), fmt.Sprintf("%.0f", s.HeapMiB),
			fmt.Sprintf("%.0f / %.0f / %.0f", 100*s.Affinity, 100*s.Spilled, 100*s.Hashed),
		}})
	}
	var summary string
	for _, s := range r.Sizes {
		if s.Agents == 1000 {
			verdict := "meets"
			if s.PerAssignUS > targetUS {
				verdict = "MISSES"
			}
			summary = fmt.Sprintf("1 000 agents: %.1f µs per assignment (target ≤ %.0f µs: %s it); a call answering a single pull costs %.2f ms (one pass over the queue)",
				s.PerAssignUS, targetUS, verdict, s.PullMedMS)
		}
	}
	err := benchkit.Report(
		fmt.Sprintf("%s, %s, %d CPUs, %d lineages, %d rounds per size, %.0f%% of running builds finish per round",
			r.Benchmark, r.GoVersion, r.CPUs, *lineages, *rounds, 100**finish),
		[]string{"agents", "queued", "assigned", "µs/assignment", "ms/call (median)", "ms/single pull", "Route µs/assignment (re-index per call)", "NewIndex ms",
			"allocs/assignment", "B/assignment", "index MiB", "heap MiB", "affinity/spilled/hashed %"},
		rows, summary, r, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "routingsim:", err)
		os.Exit(1)
	}
}

// world is the farm being simulated.
type world struct {
	r        *rand.Rand
	lineages []lineage
	pick     *rand.Zipf // lineage popularity
	agents   []routing.Agent
	runs     [][]string // per agent: tenants of its running builds
	queue    []routing.Build
	running  map[string]int
	cfg      routing.Config
	now      time.Time
	nextID   int
}

type lineage struct {
	id, tenant string
	base       string
	chain      []string
	labels     map[string]string
}

func hash(parts ...any) string {
	s := sha256.Sum256([]byte(fmt.Sprint(parts...)))
	return hex.EncodeToString(s[:])
}

func newWorld(nAgents, nLineages int) *world {
	w := &world{r: rand.New(rand.NewPCG(1, uint64(nAgents))), running: map[string]int{}, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	w.pick = rand.NewZipf(w.r, 1.1, 8, uint64(nLineages-1))
	tenantPick := rand.NewZipf(w.r, 1.2, 2, tenants-1)
	basePick := rand.NewZipf(w.r, 1.3, 2, baseImages-1)
	for i := range nLineages {
		base := fmt.Sprintf("registry.example/base-%02d:latest", basePick.Uint64())
		l := lineage{id: hash("lineage", i), tenant: fmt.Sprintf("tenant-%02d", tenantPick.Uint64()), base: base}
		l.chain = []string{hash("FROM ", base)} // shared by lineages on one base
		for j := range 3 + w.r.IntN(10) {
			l.chain = append(l.chain, hash(l.id, j))
		}
		switch x := w.r.IntN(100); {
		case x < 10:
			l.labels = map[string]string{"arch": "arm64"}
		case x < 11:
			l.labels = map[string]string{"gpu": "true"}
		}
		w.lineages = append(w.lineages, l)
	}
	w.cfg = routing.Config{
		Delay:         2 * time.Second,
		TenantWeights: map[string]int{"tenant-00": 3, "tenant-01": 2},
		TenantCaps:    map[string]int{"tenant-00": nAgents * slotsPerAgent / 3},
		LoadFactor:    1.25,
	}
	for i := range nAgents {
		a := routing.Agent{Name: fmt.Sprintf("agent-%05d", i), Slots: slotsPerAgent, Labels: map[string]string{"os": "linux", "arch": "amd64"}}
		switch x := w.r.IntN(100); {
		case x < 12:
			a.Labels["arch"] = "arm64"
		case x < 15:
			a.Labels["gpu"] = "true"
		}
		for range 12 { // recent history
			learn(&a, &w.lineages[w.pick.Uint64()], w.lineages[0].chain[:0])
		}
		// A busy farm: every slot runs something.
		a.Running = slotsPerAgent
		w.runs = append(w.runs, nil)
		for range slotsPerAgent {
			t := w.lineages[w.pick.Uint64()].tenant
			w.runs[i] = append(w.runs[i], t)
			w.running[t]++
		}
		w.agents = append(w.agents, a)
	}
	return w
}

// learn puts a build of l at the front of the agent's bounded cache summary.
func learn(a *routing.Agent, l *lineage, chain []string) {
	if len(chain) == 0 {
		chain = l.chain
	}
	front := func(list []string, items []string, bound int) []string {
		out := slices.Clone(items)
		for _, s := range list {
			if len(out) == bound {
				break
			}
			if !slices.Contains(items, s) {
				out = append(out, s)
			}
		}
		return out
	}
	a.Lineages = front(a.Lineages, []string{l.id}, summaryLineage)
	a.BaseImages = front(a.BaseImages, []string{l.base}, summaryBases)
	a.Chains = front(a.Chains, chain, summaryChains)
}

// newBuild queues a build of a popular lineage; a quarter edit one of
// their instructions (the chain diverges from there).
func (w *world) newBuild(queuedAt time.Time) routing.Build {
	li := int(w.pick.Uint64())
	l := &w.lineages[li]
	b := routing.Build{
		ID: fmt.Sprintf("build-%07d", w.nextID), Tenant: l.tenant, Lineage: l.id, BaseImages: []string{l.base},
		Chain: l.chain, Labels: l.labels, QueuedAt: queuedAt,
	}
	w.nextID++
	if w.r.IntN(100) < 5 {
		b.Priority = 10
	}
	if w.r.IntN(4) == 0 {
		k := 1 + w.r.IntN(len(l.chain)-1)
		b.Chain = slices.Clone(l.chain)
		for j := k; j < len(b.Chain); j++ {
			b.Chain[j] = hash(b.ID, j)
		}
	}
	return b
}

func simulate(nAgents, nBuilds, nLineages, rounds int, finish float64) sizeResult {
	w := newWorld(nAgents, nLineages)
	for range nBuilds {
		w.queue = append(w.queue, w.newBuild(w.now.Add(-time.Duration(w.r.Int64N(int64(10*time.Minute))))))
	}
	lineageOf := map[string]*lineage{}
	for i := range w.lineages {
		lineageOf[w.lineages[i].id] = &w.lineages[i]
	}
	res := sizeResult{Agents: nAgents, Queued: nBuilds, Rounds: rounds}

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	start := time.Now()
	x := routing.NewIndex(w.agents)
	res.IndexMS = float64(time.Since(start).Microseconds()) / 1000
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.IndexMiB = float64(int64(ms.HeapInuse)-int64(before)) / (1 << 20)

	var decide, route time.Duration
	var routed int
	var calls, routeCalls []float64
	var mallocs, bytes uint64
	var scoreSum, bestSum float64
	reasons := map[routing.Reason]int{}
	for round := range rounds {
		// Running builds finish; their agents pull again.
		for i := range w.agents {
			a := &w.agents[i]
			kept := w.runs[i][:0]
			for _, t := range w.runs[i] {
				if w.r.Float64() < finish {
					w.running[t]--
					continue
				}
				kept = append(kept, t)
			}
			w.runs[i] = kept
			if a.Running != len(kept) || a.FreeSlots != a.Slots-len(kept) {
				a.Running, a.FreeSlots = len(kept), a.Slots-len(kept)
				x.Set(*a)
			}
		}
		if round < 3 { // the simple entry point, re-indexing every call
			t := time.Now()
			n := len(routing.Route(w.cfg, w.queue, w.agents, w.running, w.now))
			el := time.Since(t)
			route += el
			routed += n
			routeCalls = append(routeCalls, float64(el.Microseconds())/1000)
		}
		runtime.ReadMemStats(&ms)
		m0, b0 := ms.Mallocs, ms.TotalAlloc
		t := time.Now()
		d := x.Decide(w.cfg, w.queue, w.running, w.now)
		el := time.Since(t)
		runtime.ReadMemStats(&ms)
		mallocs += ms.Mallocs - m0
		bytes += ms.TotalAlloc - b0
		decide += el
		calls = append(calls, float64(el.Microseconds())/1000)
		res.Assignments += len(d.Assignments)

		// Apply: agents run and learn the builds, the queue refills.
		assigned := map[string]string{}
		for _, a := range d.Assignments {
			assigned[a.Build] = a.Agent
			reasons[a.Reason]++
			scoreSum += float64(a.Score)
			bestSum += float64(a.BestScore)
		}
		agentIdx := map[string]int{}
		for i := range w.agents {
			agentIdx[w.agents[i].Name] = i
		}
		w.queue = slices.DeleteFunc(w.queue, func(b routing.Build) bool {
			name, ok := assigned[b.ID]
			if !ok {
				return false
			}
			i := agentIdx[name]
			a := &w.agents[i]
			a.Running++
			a.FreeSlots--
			w.runs[i] = append(w.runs[i], b.Tenant)
			w.running[b.Tenant]++
			learn(a, lineageOf[b.Lineage], b.Chain)
			x.Set(*a)
			return true
		})
		for range len(d.Assignments) {
			w.queue = append(w.queue, w.newBuild(w.now))
		}
		w.now = w.now.Add(500 * time.Millisecond)
	}

	// A call answering one pull: one agent has one free slot.
	var pulls []float64
	for i := range w.agents {
		if w.agents[i].FreeSlots != 0 {
			a := w.agents[i]
			a.FreeSlots = 0
			x.Set(a)
		}
	}
	for range 15 {
		a := w.agents[w.r.IntN(len(w.agents))]
		a.FreeSlots = 1
		x.Set(a)
		t := time.Now()
		x.Decide(w.cfg, w.queue, w.running, w.now)
		pulls = append(pulls, float64(time.Since(t).Microseconds())/1000)
		a.FreeSlots = 0
		x.Set(a)
	}

	runtime.ReadMemStats(&ms)
	res.HeapMiB = float64(ms.HeapInuse) / (1 << 20)
	n := float64(max(res.Assignments, 1))
	res.PerAssignUS = float64(decide.Nanoseconds()) / 1000 / n
	res.CallMedMS, res.CallMaxMS = benchkit.Median(calls), slices.Max(calls)
	res.PullMedMS = benchkit.Median(pulls)
	res.RouteUS = float64(route.Nanoseconds()) / 1000 / float64(max(routed, 1))
	res.RouteCallMS = benchkit.Median(routeCalls)
	res.AllocsPer, res.BytesPer = float64(mallocs)/n, float64(bytes)/n
	res.Affinity, res.Spilled, res.Hashed = float64(reasons[routing.Affinity])/n, float64(reasons[routing.Spilled])/n, float64(reasons[routing.Hashed])/n
	res.MeanScore, res.MeanBest = scoreSum/n, bestSum/n
	return res
}
