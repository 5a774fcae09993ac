// Command scale measures the farm's control plane at fleet size: 1 000
// simulated agents by default, each the real agent's loop
// (agentproto.Worker: its own NATS connection, one WorkOffer per free
// slot, a heartbeat with its cache summary in KV KILN_AGENTS every 5 s,
// START and FINISH reports) around a wait instead of Docker, against one
// real scheduler and a real NATS server (the nats-server library with
// JetStream on files), each a process of its own (this binary started
// again) so /proc measures each alone. Builds are submitted at a steady
// rate through the intake the gateway uses: the QUEUED record in KV
// KILN_BUILDS, its QUEUED event and the kiln.requests message carrying the
// record, as gateway.StartBuild writes them.
//
// By default builds carry no cache affinity, so the latency is the control
// plane's own; -lineages N draws them from N lineages, and the router's
// holds for a busy preferred agent (up to 2 s) then dominate p99.
//
// It reports heartbeat KV writes/s, dispatch latency (submit → the agent's
// pull answered with the build, one clock, this process) p50/p99/max, the
// scheduler's CPU seconds and RSS, and the NATS server's RSS, as a table
// and JSON (bench/results/scale.json); -cpuprofile writes the scheduler's
// CPU profile of the measured span.
//
//	go run ./bench/scale
//	go run ./bench/scale -agents 1000 -rate 100 -duration 60s -cpuprofile /tmp/sched.pprof
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/logging"
)

type options struct {
	agents, slots int
	rate          int
	buildTime     time.Duration
	lineages      int
	warmup        time.Duration
	duration      time.Duration
	targetP99MS   float64
	targetRSSMiB  float64
	out           string
	cpuProfile    string
	logLevel      string
}

func main() {
	runChild()
	var o options
	flag.IntVar(&o.agents, "agents", 1000, "simulated agents, each with its own NATS connection")
	flag.IntVar(&o.slots, "slots", 1, "slots per agent")
	flag.IntVar(&o.rate, "rate", 100, "builds submitted per second")
	flag.DurationVar(&o.buildTime, "build-time", 2*time.Second, "how long a simulated build holds its slot")
	flag.IntVar(&o.lineages, "lineages", 0, "lineages (repositories) the builds are drawn from, for cache affinity: the router then holds a build up to the scheduler's route delay (2 s) for its busy preferred agent, which dominates p99; 0: builds without affinity, the control plane's own latency")
	flag.DurationVar(&o.warmup, "warmup", 15*time.Second, "submissions at the same rate left out of the figures, after the fleet joined")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "how long submissions are measured")
	flag.Float64Var(&o.targetP99MS, "target-p99-ms", 20, "target dispatch p99")
	flag.Float64Var(&o.targetRSSMiB, "target-rss-mib", 500, "target scheduler RSS")
	flag.StringVar(&o.out, "out", "bench/results/scale.json", "where to write the JSON report")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write the scheduler's CPU profile of the measured span to this file")
	flag.StringVar(&o.logLevel, "log-level", "warn", "log level of the scheduler, NATS child and agents")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.agents <= 0 || o.slots <= 0 || o.rate <= 0 || o.duration <= 0 || o.lineages < 0 {
		return errors.New("-agents, -slots, -rate and -duration must be positive, -lineages not negative")
	}
	log, err := logging.New(os.Stderr, o.logLevel)
	if err != nil {
		return err
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kiln-bench-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.cpuProfile != "" {
		// The child writes it; it runs in another working directory's
		// terms only if relative, so make it absolute.
		if o.cpuProfile, err = absPath(o.cpuProfile); err != nil {
			return err
		}
	}

	natsProc, url, err := startNATS(dir, o.logLevel)
	if err != nil {
		return err
	}
	defer natsProc.stop(10 * time.Second)
	conn, err := bus.Connect(ctx, url, "bench-intake")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		return err
	}
	env := []string{natsURLEnv + "=" + url}
	if o.cpuProfile != "" {
		env = append(env, profileEnv+"="+o.cpuProfile)
	}
	sched, err := startChild(dir, "scheduler", o.logLevel, env, nil)
	if err != nil {
		return err
	}
	defer sched.stop(30 * time.Second)
	if err := waitLeader(ctx, conn, sched); err != nil {
		return err
	}

	rec := newRecorder()
	fmt.Fprintf(os.Stderr, "scale: starting %d agents × %d slots (heartbeats spread over %s)\n", o.agents, o.slots, heartbeatEvery)
	fl, err := startFleet(ctx, url, o.agents, o.slots, o.buildTime, log, rec.pulled)
	if err != nil {
		return err
	}
	defer fl.stop()
	if err := waitAgents(ctx, conn, o.agents); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "scale: submitting %d builds/s: %s warm-up, %s measured\n", o.rate, o.warmup, o.duration)
	subCtx, stopSubmitting := context.WithCancel(ctx)
	defer stopSubmitting()
	var submitting sync.WaitGroup
	submitting.Go(func() { rec.submitLoop(subCtx, conn, o) })
	time.Sleep(o.warmup) // the benchmark's own schedule, not synchronisation
	if o.cpuProfile != "" {
		_ = sched.cmd.Process.Signal(syscall.SIGUSR1)
	}
	m0, err := sample(ctx, conn, sched, natsProc)
	if err != nil {
		return err
	}
	rec.measure(true)
	time.Sleep(o.duration)
	rec.measure(false)
	m1, err := sample(ctx, conn, sched, natsProc)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		_ = sched.cmd.Process.Signal(syscall.SIGUSR2)
	}
	stopSubmitting()
	submitting.Wait()
	unassigned := rec.waitAssigned(30 * time.Second)
	return report(o, rec, m0, m1, unassigned)
}

func absPath(p string) (string, error) {
	if len(p) > 0 && p[0] == '/' {
		return p, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + "/" + p, nil
}

// waitLeader waits until the scheduler holds the leader lease.
func waitLeader(ctx context.Context, conn *bus.Conn, sched *child) error {
	kv, err := conn.JS.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, bus.LeaderKeyScheduler)
	if err != nil {
		return err
	}
	defer w.Stop()
	deadline := time.After(time.Minute)
	for {
		select {
		case e := <-w.Updates():
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				return nil
			}
		case <-sched.exited:
			return errors.New("scheduler exited before it led (see its log)")
		case <-deadline:
			return errors.New("scheduler did not lead within a minute")
		}
	}
}

// waitAgents waits until n agents heartbeat.
func waitAgents(ctx context.Context, conn *bus.Conn, n int) error {
	kv, err := conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for tick := time.NewTicker(250 * time.Millisecond); ; <-tick.C {
		st, err := kv.Status(ctx)
		if err != nil {
			return err
		}
		if int(st.Values()) >= n {
			tick.Stop()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents heartbeat after 2 minutes", st.Values(), n)
		}
	}
}

// measurement is one look at the processes and the heartbeat bucket.
type measurement struct {
	at                time.Time
	sched, nats, self procStats
	agentsSeq         uint64 // KV KILN_AGENTS's last sequence: one per heartbeat write
	// cpuWait is the kernel's count of microseconds some runnable task
	// waited for a CPU (/proc/pressure/cpu "some"), -1 if not known.
	cpuWait int64
}

func sample(ctx context.Context, conn *bus.Conn, sched, natsProc *child) (measurement, error) {
	m := measurement{at: time.Now(), cpuWait: benchkit.CPUPressure()}
	var err error
	for _, c := range []*child{sched, natsProc} {
		select {
		case <-c.exited:
			return m, fmt.Errorf("%s exited (%v); its output ends:\n%s", c.role, c.cmd.ProcessState, c.tail())
		default:
		}
	}
	if m.sched, err = readProc(sched.pid()); err != nil {
		return m, err
	}
	if m.nats, err = readProc(natsProc.pid()); err != nil {
		return m, err
	}
	if m.self, err = readProc(os.Getpid()); err != nil {
		return m, err
	}
	s, err := conn.JS.Stream(ctx, "KV_"+bus.BucketAgents)
	if err != nil {
		return m, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return m, err
	}
	m.agentsSeq = info.State.LastSeq
	return m, nil
}

// recorder keeps when each build was submitted and when an agent got it.
type recorder struct {
	mu        sync.Mutex
	submitted map[string]time.Time
	measured  map[string]bool // submitted while measuring
	latencies []time.Duration // of measured builds
	// handed is when each measured build's intake message was acknowledged;
	// intake and afterIntake split the latency there.
	handed      map[string]time.Time
	intake      []time.Duration
	afterIntake []time.Duration
	measuring   atomic.Bool
	pulls       atomic.Int64
	pullsM      atomic.Int64 // pulls returned while measuring
	submitErr   atomic.Int64
	firstErr    atomic.Pointer[error]
	// submittedM counts the submissions made while measuring.
	submittedM atomic.Int64
	assignedC  chan struct{}
}

func newRecorder() *recorder {
	return &recorder{submitted: map[string]time.Time{}, measured: map[string]bool{}, handed: map[string]time.Time{}, assignedC: make(chan struct{}, 1)}
}

func (r *recorder) measure(on bool) { r.measuring.Store(on) }

func (r *recorder) pulled(builds []*kilnv1.Build, at time.Time) {
	r.pulls.Add(1)
	if r.measuring.Load() {
		r.pullsM.Add(1)
	}
	if len(builds) == 0 {
		return
	}
	r.mu.Lock()
	for _, b := range builds {
		if t, ok := r.submitted[b.Id]; ok {
			delete(r.submitted, b.Id)
			if r.measured[b.Id] {
				delete(r.measured, b.Id)
				r.latencies = append(r.latencies, at.Sub(t))
				if h, ok := r.handed[b.Id]; ok {
					r.intake = append(r.intake, h.Sub(t))
					r.afterIntake = append(r.afterIntake, at.Sub(h))
				}
			}
			delete(r.handed, b.Id)
		}
	}
	r.mu.Unlock()
	select {
	case r.assignedC <- struct{}{}:
	default:
	}
}

// submitLoop submits o.rate builds a second until ctx ends, each on its
// own goroutine (open loop: a slow submission does not delay the next).
func (r *recorder) submitLoop(ctx context.Context, conn *bus.Conn, o options) {
	store, err := buildstore.Open(ctx, conn.JS)
	if err != nil {
		r.submitErr.Add(1)
		return
	}
	t := time.NewTicker(time.Second / time.Duration(o.rate))
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lineage := ""
		if o.lineages > 0 {
			lineage = fmt.Sprintf("repo-%04d", rand.IntN(o.lineages))
		}
		wg.Go(func() {
			if err := r.submit(ctx, conn, store, lineage); err != nil && ctx.Err() == nil {
				r.submitErr.Add(1)
				r.firstErr.CompareAndSwap(nil, &err)
			}
		})
	}
}

// submit writes what gateway.StartBuild writes for a build: the QUEUED
// record, its QUEUED event, and the intake message with the record.
func (r *recorder) submit(ctx context.Context, conn *bus.Conn, store *buildstore.Store, lineage string) error {
	now := time.Now()
	b := &kilnv1.Build{
		Id: buildstore.NewID(now), Tenant: "bench", State: kilnv1.BuildState_BUILD_STATE_QUEUED,
		Spec: &kilnv1.BuildSpec{}, CreatedAt: timestamppb.New(now), QueuedAt: timestamppb.New(now),
	}
	if lineage != "" {
		b.Affinity = &kilnv1.Affinity{Lineage: lineage}
	}
	r.mu.Lock()
	r.submitted[b.Id] = now
	if r.measuring.Load() {
		r.measured[b.Id] = true
		r.submittedM.Add(1)
	}
	r.mu.Unlock()
	rev, err := store.Create(ctx, b)
	if err != nil {
		return err
	}
	ev, err := bus.EventMsg(&kilnv1.BuildEvent{BuildId: b.Id, Event: &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{State: b.State}}})
	if err != nil {
		return err
	}
	if _, err := conn.JS.PublishMsgAsync(ev); err != nil {
		return err
	}
	msg, err := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id, Build: b, Revision: rev})
	if err != nil {
		return err
	}
	msg.Header.Set(nats.MsgIdHdr, b.Id)
	if _, err = conn.JS.PublishMsg(ctx, msg); err != nil {
		return err
	}
	handed := time.Now()
	r.mu.Lock()
	if _, waiting := r.submitted[b.Id]; waiting && r.measured[b.Id] {
		r.handed[b.Id] = handed
	}
	r.mu.Unlock()
	return nil
}

// waitAssigned waits up to d for every measured build to be assigned and
// returns how many were not.
func (r *recorder) waitAssigned(d time.Duration) int {
	deadline := time.After(d)
	for {
		r.mu.Lock()
		left := len(r.measured)
		r.mu.Unlock()
		if left == 0 {
			return 0
		}
		select {
		case <-r.assignedC:
		case <-deadline:
			return left
		}
	}
}

// percentile of sorted ds, p in [0,1].
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(p*float64(len(ds))+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}
