// Command dispatch measures kiln's dispatch latency: the time from a
// client calling StartBuild to an agent holding the build, with builds
// offered at a steady rate (200/s by default, a ticker, open loop) to a
// farm whose parts are real — the nats-server library with JetStream on
// files, the gateway over gRPC on loopback, the scheduler — and whose agents
// are simulated: each speaks to the farm exactly as agent.Agent does (a
// WorkOffer request per free slot, heartbeats with cache summaries, START
// and FINISH reports through package agentproto, which the scheduler fences
// and writes) and builds by waiting -build-time instead of running Docker.
//
// Latency is measured in this process on one clock, per build: from just
// before StartBuild is called to the moment the simulated agent's pull is
// answered with the build. The same timeline splits it into the gateway's
// work before the record (gRPC, validation, context check), writing the
// record and handing it over (the intake message seen on kiln.requests),
// waiting for a free slot on the agent it went to (until that agent sent
// the pull that got it), the scheduler up to its decision (lease start
// minus AssignTimeout), and the CAS to ASSIGNED plus the reply. It prints
// p50/p90/p99/max as a table and as JSON (bench/results/dispatch.json),
// with the dispatcher goroutine's time per assignment, a JetStream round
// trip probed during the load, and how builds spread over the agents.
//
//	go run ./bench/dispatch
//
// With -cluster it runs NATS as nats-server processes instead (package
// localfarm: JetStream on files, sync_interval always, one node, or three
// in one cluster with every stream, bucket and object store on three
// replicas) and measures each -cluster-rates rate on each farm, a fresh
// farm per run, side by side (bench/results/dispatch-cluster.json). The
// gateway and the scheduler stay in this process, on the cluster's URLs:
// the timeline needs them on this process's clock (the dispatcher's
// "build assigned" log, the created_at of the record), and it is NATS the
// runs compare.
//
//	go run ./bench/dispatch -cluster -agents 50 -slots 8
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/scheduler/routing"
	"github.com/kilnbuild/kiln/services/logging"
)

// GitLab runners ask for jobs every check_interval, 3 s by default.
const gitlabPollMS = 3000.0

type options struct {
	rate      int
	duration  time.Duration
	warmup    time.Duration
	agents    int
	slots     int
	buildTime time.Duration
	repos     int
	format    string
	// freshContexts: every build uploads a new commit first.
	freshContexts bool
	routeDelay    time.Duration
	targetMS      float64
	out           string
	cpuProfile    string
	memProfile    string
	logLevel      string
	// natsNodes: 0 = the nats-server library in this process; N = N
	// nats-server processes (localfarm).
	natsNodes int
	natsSync  string
	// cluster: run every rate of clusterRates on one node and on three
	// (R3), each on a fresh farm, and report them side by side.
	cluster      bool
	clusterRates string
	clusterNodes string
	// alignIntake: move the intake consumer's leadership to its stream's
	// leader before the load.
	alignIntake bool
}

func main() {
	var o options
	flag.IntVar(&o.rate, "rate", 200, "builds offered per second")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long builds are offered and measured (after the warm-up)")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "builds offered first at the same rate and left out of the figures")
	flag.IntVar(&o.agents, "agents", 20, "simulated agents")
	flag.IntVar(&o.slots, "slots", 4, "slots per agent (concurrent pull loops)")
	flag.DurationVar(&o.buildTime, "build-time", 100*time.Millisecond, "how long a simulated build holds its slot")
	flag.IntVar(&o.repos, "repos", 200, "repositories the builds are drawn from (each its own Dockerfile and context)")
	flag.StringVar(&o.format, "context", "manifest", "context format: manifest (what the kiln CLI sends) or tar")
	flag.BoolVar(&o.freshContexts, "fresh-contexts", false, "each build first uploads its own context (its repository with one file changed, as a CI job with a new commit does), outside the timed span; default: every build of a repository uses the context uploaded at the start")
	flag.DurationVar(&o.routeDelay, "route-delay", scheduler.DefaultRouteDelay, "scheduler --route-delay: how long a build waits for its busy preferred agent (0 means the default; 1ms for practically no holds)")
	flag.Float64Var(&o.targetMS, "target-p99-ms", 10, "target p99 submit-to-assigned latency")
	flag.StringVar(&o.out, "out", "bench/results/dispatch.json", "where to write the JSON report")
	flag.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile (from the start of the run) to this file after the offered period")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the offered period to this file")
	flag.StringVar(&o.logLevel, "log-level", "warn", "log level of the farm's services")
	flag.IntVar(&o.natsNodes, "nats-nodes", 0, "0: the nats-server library in this process; N: N nats-server processes in one cluster (JetStream sync always, replicas 3 from 3 nodes)")
	flag.BoolVar(&o.cluster, "cluster", false, "measure each -cluster-rates rate on 1 nats-server process and on a 3-node R3 cluster, side by side (JSON default bench/results/dispatch-cluster.json)")
	flag.StringVar(&o.clusterRates, "cluster-rates", "200,1000", "with -cluster: the offered rates, comma-separated")
	flag.StringVar(&o.clusterNodes, "cluster-nodes", "1,3", "with -cluster: the farms' NATS nodes, comma-separated (0: the library in this process)")
	flag.StringVar(&o.natsSync, "nats-sync", "always", "JetStream sync_interval of nats-server processes (always: fsync every write; e.g. 2m, the server's default)")
	flag.BoolVar(&o.alignIntake, "align-intake", false, "before the load, move the scheduler's intake consumer's leadership to the server leading KILN_REQUESTS (replicated farms)")
	flag.Parse()
	if o.cluster {
		outSet := false
		flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
		if !outSet {
			o.out = "bench/results/dispatch-cluster.json"
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "dispatch:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.rate <= 0 || o.duration <= 0 || o.agents <= 0 || o.slots <= 0 || o.repos <= 0 || o.natsNodes < 0 {
		return fmt.Errorf("-rate, -duration, -agents, -slots and -repos must be positive, -nats-nodes not negative")
	}
	log, err := logging.New(os.Stderr, o.logLevel)
	if err != nil {
		return err
	}
	if !o.cluster {
		r, err := measure(o, log)
		if err != nil {
			return err
		}
		return report(o, r)
	}
	rates, err := intList("-cluster-rates", o.clusterRates, 1)
	if err != nil {
		return err
	}
	farms, err := intList("-cluster-nodes", o.clusterNodes, 0)
	if err != nil {
		return err
	}
	var runs []result
	for _, nodes := range farms {
		for _, rate := range rates {
			ro := o
			ro.natsNodes, ro.rate = nodes, rate
			fmt.Fprintf(os.Stderr, "dispatch: %d builds/s on %d NATS node(s)\n", rate, nodes)
			r, err := measure(ro, log)
			if err != nil {
				return fmt.Errorf("%d builds/s on %d NATS node(s): %w", rate, nodes, err)
			}
			runs = append(runs, r)
			fmt.Fprintf(os.Stderr, "dispatch: %s at %d/s: p50 %.2f ms, p99 %.2f ms, assigned %.0f/s\n",
				farmName(r), rate, r.Latency.P50, r.Latency.P99, r.AssignedPerS)
			// The runs so far, in case a later one does not finish.
			if err := writeJSON(o.out, clusterResultOf(o, runs)); err != nil {
				return err
			}
		}
	}
	return clusterReport(o, runs)
}

// intList parses a comma-separated list of integers of at least least.
func intList(flagName, list string, least int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < least {
			return nil, fmt.Errorf("%s: %q is not an integer of at least %d", flagName, f, least)
		}
		out = append(out, v)
	}
	return out, nil
}

// measure runs one farm under one offered rate and analyses it.
func measure(o options, log *slog.Logger) (result, error) {
	var none result
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "kiln-bench-dispatch-")
	if err != nil {
		return none, err
	}
	defer os.RemoveAll(tmp)

	assignLog := newAssignLog(log.Handler())
	schedCfg := scheduler.Config{
		Lease: agent.DefaultLease, AssignTimeout: scheduler.DefaultAssignTimeout,
		Routing: routing.Config{Delay: o.routeDelay}, Logger: slog.New(assignLog),
	}
	f, err := startFarm(ctx, tmp, log, schedCfg, o.natsNodes, o.natsSync)
	if err != nil {
		return none, err
	}
	defer f.stop()
	bs, cs := kilnv1.NewBuildServiceClient(f.client), kilnv1.NewContextServiceClient(f.client)

	warmupN := int(o.warmup.Seconds() * float64(o.rate))
	n := warmupN + int(o.duration.Seconds()*float64(o.rate))
	rec := newRecorder(n, schedCfg.AssignTimeout)
	tapConn, err := f.connect(ctx, "bench-tap")
	if err != nil {
		return none, err
	}
	if err := rec.tap(tapConn); err != nil {
		return none, err
	}
	fmt.Fprintf(os.Stderr, "dispatch: uploading %d repositories' contexts (%s)\n", o.repos, o.format)
	repos, err := uploadRepositories(ctx, cs, o.repos, o.format)
	if err != nil {
		return none, err
	}

	agentsCtx, stopAgents := context.WithCancel(ctx)
	var agentsDone sync.WaitGroup
	defer func() { stopAgents(); agentsDone.Wait() }()
	for i := range o.agents {
		conn, err := f.connect(ctx, fmt.Sprintf("bench-agent-%02d", i))
		if err != nil {
			return none, err
		}
		a, err := benchkit.NewSimAgent(ctx, conn, fmt.Sprintf("sim-%02d", i), o.slots, o.buildTime, log, rec.pulled)
		if err != nil {
			return none, err
		}
		agentsDone.Go(func() { a.Run(agentsCtx) })
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = rec.probeFarm(pctx, bs, repos[0])
	cancel()
	if err != nil {
		return none, err
	}

	probeConn, err := f.connect(ctx, "bench-rtt-probe")
	if err != nil {
		return none, err
	}
	if o.alignIntake && o.natsNodes > 1 {
		was, err := alignIntake(ctx, probeConn)
		if err != nil {
			return none, err
		}
		fmt.Fprintf(os.Stderr, "dispatch: intake %s; aligned\n", was)
		// The scheduler's pulls follow the new leader: a build through.
		pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		rec.reprobe()
		err = rec.probeFarm(pctx, bs, repos[1])
		cancel()
		if err != nil {
			return none, fmt.Errorf("after aligning the intake: %w", err)
		}
	}
	probe, err := newRTTProbe(ctx, probeConn)
	if err != nil {
		return none, err
	}
	fmt.Fprintf(os.Stderr, "dispatch: offering %d builds/s for %s (+%s warm-up) to %d agents × %d slots\n", o.rate, o.duration, o.warmup, o.agents, o.slots)
	if o.cpuProfile != "" {
		pf, err := os.Create(o.cpuProfile)
		if err != nil {
			return none, err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return none, err
		}
	}
	fsyncs, err := newFsyncProbe(tmp)
	if err != nil {
		return none, err
	}
	seqs0 := streamSeqs(ctx, probeConn.JS)
	probeCtx, stopProbe := context.WithCancel(ctx)
	var probing sync.WaitGroup
	probing.Go(func() { probe.run(probeCtx) })
	probing.Go(func() { fsyncs.run(probeCtx) })
	cpu0, natsCPU0, psi0, wall0 := cpuTime(), processCPU(f.natsPIDs), benchkit.CPUPressure(), time.Now()
	var prepare func(context.Context, int, repository) (repository, error)
	if o.freshContexts {
		prepare = func(ctx context.Context, i int, repo repository) (repository, error) {
			return newCommit(ctx, cs, o.format, repo, i)
		}
	}
	rec.offer(ctx, bs, repos, o.rate, prepare)
	wall, cpu, natsCPU, psi1 := time.Since(wall0), cpuTime()-cpu0, processCPU(f.natsPIDs)-natsCPU0, benchkit.CPUPressure()
	stopProbe()
	probing.Wait()
	seqs1 := streamSeqs(ctx, probeConn.JS)
	if o.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if o.memProfile != "" {
		if err := writeAllocs(o.memProfile); err != nil {
			return none, err
		}
	}
	left := rec.waitAssigned(ctx, o.routeDelay+15*time.Second)
	stopAgents()
	agentsDone.Wait()

	samples, pulls := rec.finish(assignLog.seen)
	r := analyze(o, samples[warmupN:], pulls, wall, cpu)
	r.Unassigned = left
	r.MaxInFlight = rec.maxFlight
	r.KVRead, r.KVWrite = probe.result()
	r.Fsync = fsyncs.result()
	// Every build offered in the period (warm-up included) made its writes
	// there, give or take those still in flight at either end.
	r.WritesPerBuild = streamWrites(seqs0, seqs1, n)
	r.CPUPressure = -1
	if psi0 >= 0 && psi1 >= 0 {
		r.CPUPressure = float64(psi1-psi0) / float64(wall.Microseconds())
	}
	r.NATSNodes, r.Replicas = o.natsNodes, f.replicas
	if o.natsNodes > 0 {
		r.NATSSync = o.natsSync
	}
	r.NATSCPUBusy = natsCPU.Seconds() / wall.Seconds() / float64(runtime.NumCPU())
	return r, nil
}

// cpuTime is the CPU time (user + system) this process has used: the NATS
// server, gateway, scheduler, agents and load generator together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the CPU time (user + system) the processes pids have used,
// from /proc/<pid>/stat; 0 for those it cannot read.
func processCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces) in parentheses:
		// utime and stime are the 12th and 13th, in clock ticks (100/s).
		_, rest, ok := strings.Cut(string(data), ") ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

// cpus is what the Go runtime may use, for the report.
func cpus() int { return runtime.GOMAXPROCS(0) }

// writeAllocs writes the allocation profile to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
