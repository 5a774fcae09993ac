package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// metrics is one scrape of a /metrics endpoint.
type metrics map[string]*dto.MetricFamily

// scrape reads and parses http://addr/metrics.
func scrape(t testing.TB, addr string) metrics {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(metricsText(t, addr)))
	if err != nil {
		t.Fatalf("parse %s/metrics: %v", addr, err)
	}
	return fams
}

// metricsText returns the body of http://addr/metrics as served.
func metricsText(t testing.TB, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics = %d", addr, resp.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s/metrics: %v", addr, err)
	}
	return string(body)
}

// get sums the series of name whose labels include labels ("k=v" pairs):
// a counter's or gauge's value, a histogram's sample count. A family that
// is not there reads -1, so a missing metric never passes for zero.
func (m metrics) get(name string, labels ...string) float64 {
	fam, ok := m[name]
	if !ok {
		return -1
	}
	var sum float64
	for _, s := range fam.Metric {
		have := map[string]string{}
		for _, l := range s.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		}
	}
	return sum
}

// change is one metric's expected movement between two scrapes.
type change struct {
	name   string
	labels []string
	delta  float64
}

func (c change) String() string {
	return fmt.Sprintf("%s{%s}", c.name, strings.Join(c.labels, ","))
}

// waitMetrics scrapes addr until every change has happened (the services
// count a build's end just after the client hears of it), then fails on
// any that moved by something else.
func waitMetrics(t *testing.T, what, addr string, before metrics, changes []change) metrics {
	t.Helper()
	var after metrics
	// A vector without series yet is not exported: it was at zero.
	moved := func(c change) float64 {
		return after.get(c.name, c.labels...) - max(before.get(c.name, c.labels...), 0)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = scrape(t, addr)
		done := true
		for _, c := range changes {
			if moved(c) < c.delta {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	for _, c := range changes {
		if after.get(c.name, c.labels...) < 0 {
			t.Errorf("%s: %s is not exported", what, c)
		} else if d := moved(c); d != c.delta {
			t.Errorf("%s: %s moved by %v, want %v", what, c, d, c.delta)
		}
	}
	return after
}

// steps counts a --progress json output's finished steps, by cached.
func stepsOf(t *testing.T, r result) (ran, cached int, id string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		ev := &kilnv1.BuildEvent{}
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("json progress line %q: %v", line, err)
		}
		id = ev.BuildId
		if s := ev.GetStepFinished(); s != nil {
			if s.Cached {
				cached++
			} else {
				ran++
			}
		}
	}
	return ran, cached, id
}

// TestMetricsAfterBuilds runs kiln builds on a farm of separate processes
// and checks that the gateway's, the scheduler's and the agent's /metrics
// moved by what the builds did: a new build, an idempotent replay of it,
// and a rebuild from the cache.
func TestMetricsAfterBuilds(t *testing.T) {
	engines := enginetest.StartEngines(t, "metrics1")
	f := startFaultFarm(t, faultFarmOptions{}, engines, "metrics-a")
	gw, sched, ag := f.gw.addrs["http"], f.sched.addrs["http"], f.agents["metrics-a"].addrs["http"]
	waitFor(t, time.Minute, "the scheduler to lead", func() bool { return scrape(t, sched).get("kiln_scheduler_leader") == 1 })

	n := uniq()
	msg := "metrics " + n + "\n"
	dockerfile := fmt.Sprintf("FROM %s\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /copy\n", f.base)
	dir := writeContext(t, map[string]string{"Dockerfile": dockerfile, "msg.txt": msg})
	contextBytes := float64(len(dockerfile) + len(msg))
	build := func(args ...string) result {
		t.Helper()
		md := filepath.Join(t.TempDir(), "md.json")
		r := kiln(t, f.gw.addrs["grpc"], append([]string{"build", "--builder", "buildkit", "--progress", "json", "--metadata-file", md}, append(args, dir)...)...)
		if r.code != 0 {
			t.Fatalf("kiln build: %s", r)
		}
		return r
	}

	// A new build: every step runs; the context comes from the farm.
	gw0, sched0, ag0 := scrape(t, gw), scrape(t, sched), scrape(t, ag)
	ran, cached, first := stepsOf(t, build("--idempotency-key", "metrics-"+n))
	if ran == 0 || cached != 0 {
		t.Fatalf("first build: %d steps ran, %d cached; want every step run", ran, cached)
	}
	waitMetrics(t, "gateway", gw, gw0, []change{
		{"kiln_gateway_builds_started_total", []string{"kind=queued"}, 1},
		{"kiln_gateway_builds_started_total", []string{"kind=merged"}, 0},
		{"kiln_gateway_builds_started_total", []string{"kind=idempotent_replay"}, 0},
		{"kiln_gateway_builds_cancelled_queued_total", nil, 0},
	})
	sched1 := waitMetrics(t, "scheduler", sched, sched0, []change{
		{"kiln_scheduler_assignments_total", nil, 1},
		{"kiln_scheduler_queue_wait_seconds", nil, 1},
		{"kiln_scheduler_dispatch_latency_seconds", nil, 1},
		{"kiln_scheduler_builds_finished_total", []string{"result=succeeded"}, 1},
		{"kiln_scheduler_builds_finished_total", []string{"result=failed"}, 0},
		{"kiln_scheduler_redeliveries_total", nil, 0},
		{"kiln_scheduler_lease_expiries_total", nil, 0},
		{"kiln_scheduler_builds_failed_max_attempts_total", nil, 0},
	})
	ag1 := waitMetrics(t, "agent", ag, ag0, []change{
		{"kiln_agent_builds_total", []string{"result=succeeded", "builder=buildkit"}, 1},
		{"kiln_agent_builds_total", nil, 1},
		{"kiln_agent_build_duration_seconds", []string{"result=succeeded"}, 1},
		{"kiln_agent_steps_total", []string{"cached=false"}, float64(ran)},
		{"kiln_agent_steps_total", []string{"cached=true"}, 0},
		{"kiln_agent_step_duration_seconds", nil, float64(ran)},
		{"kiln_agent_context_fetched_bytes_total", nil, contextBytes},
		{"kiln_agent_context_local_bytes_total", nil, 0},
	})
	if got := ag1.get("kiln_agent_context_transfer_bytes_total", "builder=buildkit") - ag0.get("kiln_agent_context_transfer_bytes_total", "builder=buildkit"); got < float64(len(msg)) {
		t.Errorf("agent: context transfer to the engine moved by %v bytes, want at least msg.txt's %d", got, len(msg))
	}

	// The same idempotency key: the gateway hands back the first build;
	// nothing is scheduled or run.
	gw1 := scrape(t, gw)
	if _, _, id := stepsOf(t, build("--idempotency-key", "metrics-"+n)); id != first {
		t.Fatalf("the idempotent retry watched build %s, want %s", id, first)
	}
	waitMetrics(t, "gateway", gw, gw1, []change{
		{"kiln_gateway_builds_started_total", []string{"kind=idempotent_replay"}, 1},
		{"kiln_gateway_builds_started_total", []string{"kind=queued"}, 0},
	})

	// A rebuild without the key: a new build, every step from the cache,
	// every context blob already on the agent.
	gw2 := scrape(t, gw)
	ran2, cached2, _ := stepsOf(t, build())
	if cached2 == 0 {
		t.Fatalf("rebuild: %d steps ran, %d cached; want cached steps", ran2, cached2)
	}
	waitMetrics(t, "gateway", gw, gw2, []change{{"kiln_gateway_builds_started_total", []string{"kind=queued"}, 1}})
	sched2 := waitMetrics(t, "scheduler", sched, sched1, []change{
		{"kiln_scheduler_assignments_total", nil, 1},
		{"kiln_scheduler_queue_wait_seconds", nil, 1},
		{"kiln_scheduler_builds_finished_total", []string{"result=succeeded"}, 1},
		{"kiln_scheduler_redeliveries_total", nil, 0},
	})
	waitMetrics(t, "agent", ag, ag1, []change{
		{"kiln_agent_builds_total", []string{"result=succeeded", "builder=buildkit"}, 1},
		{"kiln_agent_steps_total", []string{"cached=true"}, float64(cached2)},
		{"kiln_agent_steps_total", []string{"cached=false"}, float64(ran2)},
		{"kiln_agent_context_fetched_bytes_total", nil, 0},
		{"kiln_agent_context_local_bytes_total", nil, contextBytes},
	})
	for _, reason := range []string{"affinity", "hashed", "spilled"} {
		t.Logf("assignments by %s: %v", reason, sched2.get("kiln_scheduler_assignments_total", "reason="+reason)-sched0.get("kiln_scheduler_assignments_total", "reason="+reason))
	}

	// Gauges once the farm is idle.
	s, a := scrape(t, sched), scrape(t, ag)
	for _, g := range []struct {
		what string
		got  float64
		want float64
	}{
		{"kiln_scheduler_leader", s.get("kiln_scheduler_leader"), 1},
		{"kiln_scheduler_queue_depth", s.get("kiln_scheduler_queue_depth"), 0},
		{"kiln_agent_slots", a.get("kiln_agent_slots"), 1},
		{"kiln_agent_slots_busy", a.get("kiln_agent_slots_busy"), 0},
	} {
		if g.got != g.want {
			t.Errorf("%s = %v, want %v", g.what, g.got, g.want)
		}
	}
}

// TestMetricsKilndServesEveryService: kilnd's one HTTP port carries the
// metrics of its gateway, scheduler and agent.
func TestMetricsKilndServesEveryService(t *testing.T) {
	k := sharedKilnd(t)
	waitFor(t, 30*time.Second, "kilnd's scheduler to lead", func() bool { return scrape(t, k.addrs.HTTP).get("kiln_scheduler_leader") == 1 })
	m := scrape(t, k.addrs.HTTP)
	for _, name := range []string{
		"kiln_gateway_builds_started_total", "kiln_context_bytes_declared_total",
		"kiln_scheduler_leader", "kiln_scheduler_queue_depth", "kiln_scheduler_assignments_total",
		"kiln_agent_slots", "kiln_agent_steps_total",
	} {
		if m.get(name) < 0 {
			t.Errorf("kilnd's /metrics lacks %s", name)
		}
	}
	if got := m.get("kiln_agent_slots"); got != 2 {
		t.Errorf("kiln_agent_slots = %v, want kilnd's 2", got)
	}
}
