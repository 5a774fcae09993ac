package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// buildTimeout bounds one `kiln build`.
const buildTimeout = 5 * time.Minute

// configuration is one way of running the workload: on how many fresh
// engines, and whether each build is pinned to an engine round-robin.
type configuration struct {
	name       string
	key        string // short, for engine names and directories
	engines    int
	roundRobin bool
}

// buildRecord is one build as the CLI's metadata file and the scheduler's
// log describe it.
type buildRecord struct {
	Lineage   string  `json:"lineage"`
	Revision  int     `json:"revision"`
	Submitted int     `json:"submitted"` // position in submission order over the run
	PinnedTo  string  `json:"pinned_to,omitempty"`
	Agent     string  `json:"agent"`
	Steps     int     `json:"steps"`
	Cached    int     `json:"cached"`
	MS        float64 `json:"ms"`
	Reason    string  `json:"reason"` // the scheduler's: affinity, hashed, spilled
	Score     int     `json:"score"`
	BestScore int     `json:"best_score"`

	buildID string
}

// result is what one configuration measured.
type result struct {
	Name         string  `json:"name"`
	Engines      int     `json:"engines"`
	Builds       int     `json:"builds"`
	Steps        int     `json:"steps"`
	Cached       int     `json:"cached"`
	CachedRatio  float64 `json:"cached_ratio"`
	RebuildRatio float64 `json:"rebuild_cached_ratio"` // revisions ≥ 1 only
	MakespanMS   float64 `json:"makespan_ms"`
	// RebuildsMS is the makespan of the rebuild waves alone (revision ≥ 1),
	// after the first builds, which are cold everywhere and placed alike.
	RebuildsMS     float64        `json:"rebuilds_makespan_ms"`
	WaveMS         []float64      `json:"wave_ms"`
	Reasons        map[string]int `json:"assignment_reasons"`
	BuildsPerAgent map[string]int `json:"builds_per_agent"`
	MultiHome      int            `json:"lineages_built_on_several_engines"`
	BuildList      []buildRecord  `json:"build_list"`
}

// workload is what every configuration builds: lineages × revisions, and
// the order each wave submits its lineages in.
type workload struct {
	base     string
	step     string // the expensive step's command
	tailRun  bool   // odd lineages RUN a command after the COPY
	lineages []string
	order    [][]int // order[wave] is a permutation of lineage indexes
}

// stepSeconds is how long the expensive step takes on this machine when
// it is idle: "a RUN that takes ~2 s", as the issue puts it.
const stepSeconds = 2.0

// expensiveStep is the -step's command: with "cpu", hashing enough zeros
// with busybox md5sum (the image's busybox is this machine's
// /bin/busybox) to take stepSeconds here, calibrated before the run; with
// "sleep", stepSeconds of waiting. It returns the command and, for cpu, the
// calibration: bytes hashed and the seconds that took.
func expensiveStep(step string) (cmd string, bytes int64, took float64, err error) {
	switch step {
	case "sleep":
		return fmt.Sprintf("sleep %g", stepSeconds), 0, stepSeconds, nil
	case "cpu":
	default:
		return "", 0, 0, fmt.Errorf("-step %q: want cpu or sleep", step)
	}
	hash := func(n int64) (float64, error) {
		start := time.Now()
		out, err := exec.Command("/bin/busybox", "sh", "-c", fmt.Sprintf("head -c %d /dev/zero | md5sum", n)).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("calibrate the expensive step: %w: %s", err, out)
		}
		return time.Since(start).Seconds(), nil
	}
	const probe = 100_000_000
	best := 0.0
	for range 3 { // the fastest of three: the machine's idle speed
		t, err := hash(probe)
		if err != nil {
			return "", 0, 0, err
		}
		if best == 0 || t < best {
			best = t
		}
	}
	bytes = int64(float64(probe)*stepSeconds/best) / 1_000_000 * 1_000_000
	if took, err = hash(bytes); err != nil {
		return "", 0, 0, err
	}
	return fmt.Sprintf("head -c %d /dev/zero | md5sum", bytes), bytes, took, nil
}

// dockerfile is a lineage's Dockerfile: the expensive cacheable step, then
// the changing file, as the issue describes the workload; with tailRun,
// every other lineage also runs a short command after the COPY (a container
// start, ~1 s of a loaded engine's time, paid by every rebuild).
func (w *workload) dockerfile(l int) string {
	df := "FROM " + w.base + "\nRUN echo " + w.lineages[l] + " && " + w.step + "\nCOPY src.txt /src.txt\n"
	if w.tailRun && l%2 == 1 {
		df += "RUN wc -c /src.txt\n"
	}
	return df
}

// farmRun is one configuration's farm during the benchmark: its engines, its
// processes, its contexts, and what it measured so far.
type farmRun struct {
	c         configuration
	dir       string
	names     []string
	engines   []*enginetest.Engine
	farm      *farm
	ctxDirs   []string
	res       *result
	submitted int
}

// startRun starts c's engines and farm and writes its contexts; on error
// it stops what it started.
func startRun(ctx context.Context, o options, w *workload, c configuration, dir string) (_ *farmRun, err error) {
	r := &farmRun{c: c, dir: dir, res: &result{Name: c.name, Engines: c.engines}}
	for i := range c.engines {
		r.names = append(r.names, fmt.Sprintf("%s%d", c.key, i+1))
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.stop())
		}
	}()
	logf("%s: starting %d engine(s)", c.name, c.engines)
	if r.engines, err = startEngines(r.names); err != nil {
		return r, err
	}
	if r.farm, err = startFarm(ctx, o.binDir, dir, r.engines, o.slots, []string{"--route-delay", o.routeDelay}); err != nil {
		return r, err
	}
	r.ctxDirs = make([]string, len(w.lineages))
	for l, name := range w.lineages {
		r.ctxDirs[l] = filepath.Join(dir, "context", name)
		if err := os.MkdirAll(r.ctxDirs[l], 0o755); err != nil {
			return r, err
		}
		if err := os.WriteFile(filepath.Join(r.ctxDirs[l], "Dockerfile"), []byte(w.dockerfile(l)), 0o644); err != nil {
			return r, err
		}
	}
	return r, nil
}

// wave builds revision k of every lineage at once, in the wave's order,
// and waits for all of them.
func (r *farmRun) wave(ctx context.Context, o options, w *workload, k int) error {
	order := w.order[k]
	for _, l := range order {
		src := fmt.Sprintf("%s revision %d\n", w.lineages[l], k)
		if err := os.WriteFile(filepath.Join(r.ctxDirs[l], "src.txt"), []byte(src), 0o644); err != nil {
			return err
		}
	}
	start := time.Now()
	recs := make([]buildRecord, len(order))
	errs := make([]error, len(order))
	var wg sync.WaitGroup
	for pos, l := range order {
		recs[pos] = buildRecord{Lineage: w.lineages[l], Revision: k, Submitted: r.submitted}
		if r.c.roundRobin {
			recs[pos].PinnedTo = r.names[r.submitted%len(r.names)]
		}
		r.submitted++
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(r.dir, "builds", fmt.Sprintf("%s-%d", w.lineages[l], k))
			errs[pos] = kilnBuild(ctx, o, r.farm.gateway, filepath.Join(r.dir, "cli-cache"), r.ctxDirs[l], out, &recs[pos])
		}()
	}
	wg.Wait()
	took := ms(time.Since(start))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s, wave %d: %w", r.c.name, k, err)
	}
	r.res.WaveMS = append(r.res.WaveMS, took)
	r.res.BuildList = append(r.res.BuildList, recs...)
	logf("%s: wave %d/%d done in %.1fs", r.c.name, k+1, len(w.order), took/1000)
	return nil
}

// finish totals what the run measured: its makespan is the sum of its
// waves (each from its first submission to its last completion).
func (r *farmRun) finish() (*result, error) {
	res := r.res
	for k, t := range res.WaveMS {
		res.MakespanMS += t
		if k > 0 {
			res.RebuildsMS += t
		}
	}
	if err := res.addAssignments(r.farm.scheduler.log()); err != nil {
		return nil, err
	}
	res.summarize()
	return res, nil
}

// stop stops the run's farm and engines.
func (r *farmRun) stop() error {
	var errs []error
	if r.farm != nil {
		errs = append(errs, r.farm.stop())
	}
	return errors.Join(append(errs, stopEngines(r.engines))...)
}

// kilnBuild runs one `kiln build` and fills rec from its metadata file,
// out+".json"; the CLI's output goes to out+".log".
func kilnBuild(ctx context.Context, o options, gateway, cacheDir, ctxDir, out string, rec *buildRecord) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	meta := out + ".json"
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	args := []string{"build", "--gateway", gateway, "--repository", "git.example/" + rec.Lineage,
		"--progress", o.progress, "--metadata-file", meta}
	if rec.PinnedTo != "" {
		args = append(args, "--agent-label", "engine="+rec.PinnedTo)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(o.binDir, "kiln"), append(args, ctxDir)...)
	cmd.Env = append(os.Environ(), "KILN_CACHE_DIR="+cacheDir)
	// Interrupted like Ctrl-C, the CLI cancels its build on the farm.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	output, err := cmd.CombinedOutput()
	rec.MS = ms(time.Since(start))
	if werr := os.WriteFile(out+".log", output, 0o644); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("kiln build of %s revision %d: %w\n%s", rec.Lineage, rec.Revision, err, output)
	}
	data, err := os.ReadFile(meta)
	if err != nil {
		return fmt.Errorf("%s revision %d: metadata file: %w", rec.Lineage, rec.Revision, err)
	}
	var m struct {
		ID     string `json:"kiln.build.id"`
		Agent  string `json:"kiln.agent"`
		Steps  *int   `json:"kiln.cache.steps"`
		Cached *int   `json:"kiln.cache.cached"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("%s revision %d: metadata file: %w", rec.Lineage, rec.Revision, err)
	}
	if m.Steps == nil || m.Cached == nil {
		return fmt.Errorf("%s revision %d: metadata file lacks kiln.cache.steps or kiln.cache.cached: %s", rec.Lineage, rec.Revision, data)
	}
	rec.buildID, rec.Agent, rec.Steps, rec.Cached = m.ID, m.Agent, *m.Steps, *m.Cached
	return nil
}

// addAssignments attaches to each build the scheduler's reason for its
// (last) assignment, from the scheduler's JSON log.
func (r *result) addAssignments(log string) error {
	type assigned struct {
		Msg       string `json:"msg"`
		BuildID   string `json:"build_id"`
		Reason    string `json:"reason"`
		Score     int    `json:"score"`
		BestScore int    `json:"best_score"`
	}
	byID := map[string]assigned{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var a assigned
		if json.Unmarshal(sc.Bytes(), &a) == nil && a.Msg == "build assigned" {
			byID[a.BuildID] = a
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scheduler log: %w", err)
	}
	r.Reasons = map[string]int{}
	for i := range r.BuildList {
		b := &r.BuildList[i]
		a, ok := byID[b.buildID]
		if !ok {
			b.Reason = "unknown"
		} else {
			b.Reason, b.Score, b.BestScore = a.Reason, a.Score, a.BestScore
		}
		r.Reasons[b.Reason]++
	}
	return nil
}

// summarize totals the build list.
func (r *result) summarize() {
	r.BuildsPerAgent = map[string]int{}
	homes := map[string]map[string]bool{}
	var rebuildSteps, rebuildCached int
	for _, b := range r.BuildList {
		r.Builds++
		r.Steps += b.Steps
		r.Cached += b.Cached
		if b.Revision > 0 {
			rebuildSteps += b.Steps
			rebuildCached += b.Cached
		}
		r.BuildsPerAgent[b.Agent]++
		if homes[b.Lineage] == nil {
			homes[b.Lineage] = map[string]bool{}
		}
		homes[b.Lineage][b.Agent] = true
	}
	for _, h := range homes {
		if len(h) > 1 {
			r.MultiHome++
		}
	}
	r.CachedRatio = ratio(r.Cached, r.Steps)
	r.RebuildRatio = ratio(rebuildCached, rebuildSteps)
}

// startEngines starts one fresh engine per name at once; if any fails, the
// others are stopped.
func startEngines(names []string) ([]*enginetest.Engine, error) {
	engines := make([]*enginetest.Engine, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			engines[i], errs[i] = enginetest.Start(name)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, stopEngines(engines))
	}
	return engines, nil
}

// stopEngines stops the engines at once.
func stopEngines(engines []*enginetest.Engine) error {
	errs := make([]error, len(engines))
	var wg sync.WaitGroup
	for i, e := range engines {
		if e == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.Stop()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "affinity: "+format+"\n", args...)
}
