package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	grpcmetadata "google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// The trace tests run kiln with OTLP export pointed at an in-process
// receiver (a real OTLP/gRPC TraceService server) and check that one build
// makes one trace from the CLI to each Dockerfile step, also when its
// agent dies mid-build and another attempt finishes it.

// Scope (tracer) names of kiln's parts.
const (
	scopeCLI       = "github.com/kilnbuild/kiln/sdk/internal/cli"
	scopeGateway   = "github.com/kilnbuild/kiln/gateway"
	scopeScheduler = "github.com/kilnbuild/kiln/scheduler"
	scopeAgent     = "github.com/kilnbuild/kiln/agent"
	scopeOtelGRPC  = "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
)

// span is one span the receiver got.
type span struct {
	service, scope, name      string
	traceID, spanID, parentID string
	attrs                     map[string]any
}

func (s span) String() string {
	return fmt.Sprintf("%s %s/%s %q parent %s %v", s.service, s.traceID[:8], s.spanID, s.name, s.parentID, s.attrs)
}

// otlpReceiver records the spans exported to it over OTLP/gRPC (on addr)
// or OTLP/HTTP with protobuf bodies (on httpAddr).
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	addr, httpAddr string

	mu    sync.Mutex // guards spans and raw
	spans []span
	raw   [][]byte // every batch as exported (protobuf), resource and events included
}

// startOTLPReceiver serves OTLP/gRPC and OTLP/HTTP traces on loopback
// ports until the test ends.
func startOTLPReceiver(t testing.TB) *otlpReceiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: lis.Addr().String(), httpAddr: hlis.Addr().String()}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, r)
	hs := &http.Server{Handler: http.HandlerFunc(r.serveHTTP)}
	done := make(chan struct{}, 2)
	go func() { _ = s.Serve(lis); done <- struct{}{} }()
	go func() { _ = hs.Serve(hlis); done <- struct{}{} }()
	t.Cleanup(func() { s.Stop(); hs.Close(); <-done; <-done })
	return r
}

// serveHTTP is OTLP/HTTP's POST /v1/traces with a protobuf body.
func (r *otlpReceiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.NotFound(w, req)
		return
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	in := &collectortrace.ExportTraceServiceRequest{}
	if err := proto.Unmarshal(body, in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, _ := r.Export(req.Context(), in)
	out, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// Export records a batch of spans.
func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	raw, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.raw = append(r.raw, raw)
	for _, rs := range req.GetResourceSpans() {
		service, _ := attrMap(rs.GetResource().GetAttributes())["service.name"].(string)
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, span{
					service: service, scope: ss.GetScope().GetName(), name: sp.GetName(),
					traceID: hex.EncodeToString(sp.GetTraceId()), spanID: hex.EncodeToString(sp.GetSpanId()),
					parentID: hex.EncodeToString(sp.GetParentSpanId()), attrs: attrMap(sp.GetAttributes()),
				})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = v.StringValue
		case *commonpb.AnyValue_BoolValue:
			m[kv.GetKey()] = v.BoolValue
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = v.IntValue
		case *commonpb.AnyValue_DoubleValue:
			m[kv.GetKey()] = v.DoubleValue
		default:
			m[kv.GetKey()] = kv.GetValue().String()
		}
	}
	return m
}

// all returns the spans received so far that match.
func (r *otlpReceiver) all(match func(span) bool) []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []span
	for _, s := range r.spans {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

// holds reports whether any exported batch holds value anywhere: a span's
// name, attributes, events, links, status, or the resource and scope
// (protobuf keeps strings as they are).
func (r *otlpReceiver) holds(value []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.raw {
		if bytes.Contains(b, value) {
			return true
		}
	}
	return false
}

// dump lists the spans of a trace, for failure messages.
func (r *otlpReceiver) dump(traceID string) string {
	var b strings.Builder
	for _, s := range r.all(func(s span) bool { return traceID == "" || s.traceID == traceID }) {
		b.WriteString("  " + s.String() + "\n")
	}
	return b.String()
}

// waitSpans waits until the spans that match satisfy cond, and returns them.
func (r *otlpReceiver) waitSpans(t testing.TB, within time.Duration, what string, match func(span) bool, cond func([]span) bool) []span {
	t.Helper()
	var got []span
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got = r.all(match)
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; spans received:\n%s", within, what, r.dump(""))
		}
		<-tick.C
	}
}

// traceEnv points the kiln processes this test starts (they inherit the
// test's environment) at r over protocol (grpc or http/protobuf), with
// spans exported 50ms after they end.
func traceEnv(t *testing.T, r *otlpReceiver, protocol string) {
	addr := r.addr
	if protocol == "http/protobuf" {
		addr = r.httpAddr
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("TRACEPARENT", "")
	t.Setenv("TRACESTATE", "")
}

// newTraceParent returns a sampled W3C traceparent and its trace and span ids.
func newTraceParent() (traceparent, traceID, spanID string) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	traceID, spanID = hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	return "00-" + traceID + "-" + spanID + "-01", traceID, spanID
}

func (s span) attr(k string) any { return s.attrs[k] }

func (s span) is(scope, name string) bool { return s.scope == scope && s.name == name }

func isStepSpan(s span) bool { return s.scope == scopeAgent && strings.HasPrefix(s.name, "step ") }

// ofBuild matches the spans that carry build id.
func ofBuild(id string) func(span) bool {
	return func(s span) bool { return s.attr("kiln.build.id") == id }
}

// inTrace matches the spans of one trace.
func inTrace(traceID string) func(span) bool {
	return func(s span) bool { return s.traceID == traceID }
}

// ancestors returns the names (scope/name) of s's ancestors in spans, nearest first.
func ancestors(spans []span, s span) []string {
	byID := map[string]span{}
	for _, x := range spans {
		byID[x.spanID] = x
	}
	var out []string
	for p, ok := byID[s.parentID]; ok && len(out) < 32; p, ok = byID[p.parentID] {
		out = append(out, p.scope+"/"+p.name)
	}
	return out
}

// stepEvents reads a finished build's step results from its event log:
// cached or not by step number.
func stepEvents(t *testing.T, bs kilnv1.BuildServiceClient, id string) map[int64]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := bs.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
	if err != nil {
		t.Fatal(err)
	}
	steps := map[int64]bool{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return steps
		}
		if err != nil {
			t.Fatalf("watch %s: %v", id, err)
		}
		if f := resp.Event.GetStepFinished(); f != nil {
			steps[int64(f.Step)] = f.Cached
		}
		if resp.Event.GetFinished() != nil {
			return steps
		}
	}
}

// TestTraceBuildFromCLIToSteps builds one context twice through a kilnd
// and the CLI, both exporting to an in-process OTLP receiver. The first
// build runs under a CI job's TRACEPARENT: its trace is that trace. Each
// build's trace holds the CLI's, the gateway's, the scheduler's and the
// agent's spans, one span per Dockerfile step with the step's cache
// result (the second build's all cached), and every span that names the
// build is in that one trace. It runs with each OTLP protocol.
func TestTraceBuildFromCLIToSteps(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) { testTraceBuildFromCLIToSteps(t, protocol) })
	}
}

func testTraceBuildFromCLIToSteps(t *testing.T, protocol string) {
	r := startOTLPReceiver(t)
	traceEnv(t, r, protocol)
	k := mustStartKilnd(t, t.TempDir())
	bs, _ := k.client(t)
	base := enginetest.BusyboxBase(t)
	n := uniq()
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo trace-" + n + " > /t\nCOPY f /f\n",
		"f":          "content " + n,
	})
	parent, parentTrace, parentSpan := newTraceParent()

	for i := range 2 {
		if i == 0 {
			t.Setenv("TRACEPARENT", parent)
		} else {
			t.Setenv("TRACEPARENT", "")
		}
		meta := filepath.Join(t.TempDir(), "meta.json")
		res := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--metadata-file", meta, dir)
		if res.code != 0 {
			t.Fatalf("build %d: %s", i+1, res)
		}
		id := str(metadata(t, meta), "kiln.build.id")

		// The CLI flushes its spans before it exits.
		roots := r.all(func(s span) bool { return s.is(scopeCLI, "kiln build") && s.attr("kiln.build.id") == id })
		if len(roots) != 1 {
			t.Fatalf("build %d: %d CLI \"kiln build\" spans for build %s, want 1; spans:\n%s", i+1, len(roots), id, r.dump(""))
		}
		root := roots[0]
		if i == 0 && (root.traceID != parentTrace || root.parentID != parentSpan) {
			t.Fatalf("with TRACEPARENT=%s the CLI's span is %s, want trace %s under span %s", parent, root, parentTrace, parentSpan)
		}
		if i == 1 && root.traceID == parentTrace {
			t.Fatalf("the second build, without TRACEPARENT, is in the first one's trace %s", parentTrace)
		}
		if root.attr("cicd.pipeline.result") != "success" || root.attr("cicd.system.component") != "cli" {
			t.Fatalf("CLI span %s: want cicd.pipeline.result=success and cicd.system.component=cli", root)
		}

		steps := stepEvents(t, bs, id)
		if len(steps) < 3 { // FROM, RUN, COPY
			t.Fatalf("build %d: step events %v, want FROM, RUN and COPY", i+1, steps)
		}
		spans := r.waitSpans(t, 30*time.Second, fmt.Sprintf("build %d's gateway, scheduler and agent spans", i+1), inTrace(root.traceID), func(got []span) bool {
			has := func(scope, name string) bool {
				return slices.ContainsFunc(got, func(s span) bool { return s.is(scope, name) && s.attr("kiln.build.id") == id })
			}
			var stepSpans int
			for _, s := range got {
				if isStepSpan(s) && s.attr("kiln.build.id") == id {
					stepSpans++
				}
			}
			return has(scopeGateway, "StartBuild") && has(scopeScheduler, "queue wait") && has(scopeScheduler, "route") &&
				has(scopeAgent, "build attempt") && has(scopeAgent, "context fetch") && stepSpans >= len(steps)
		})

		// Every span that names the build is in this trace.
		if stray := r.all(func(s span) bool { return ofBuild(id)(s) && s.traceID != root.traceID }); len(stray) > 0 {
			t.Fatalf("build %d: spans of build %s outside its trace %s:\n%v", i+1, id, root.traceID, stray)
		}
		scopes := map[string]bool{}
		for _, s := range spans {
			scopes[s.scope] = true
		}
		for _, scope := range []string{scopeCLI, scopeOtelGRPC, scopeGateway, scopeScheduler, scopeAgent} {
			if !scopes[scope] {
				t.Fatalf("build %d: trace %s has no span of %s:\n%s", i+1, root.traceID, scope, r.dump(root.traceID))
			}
		}

		// The gateway's StartBuild descends from the CLI's span through
		// the RPC; the attempt and the queue wait from StartBuild.
		one := func(scope, name string) span {
			t.Helper()
			got := slices.DeleteFunc(slices.Clone(spans), func(s span) bool { return !s.is(scope, name) || s.attr("kiln.build.id") != id })
			if len(got) != 1 {
				t.Fatalf("build %d: %d %q spans of %s, want 1:\n%s", i+1, len(got), name, scope, r.dump(root.traceID))
			}
			return got[0]
		}
		start := one(scopeGateway, "StartBuild")
		if !slices.Contains(ancestors(spans, start), scopeCLI+"/kiln build") {
			t.Fatalf("StartBuild's ancestors %v do not include the CLI's span", ancestors(spans, start))
		}
		attempt, wait, route := one(scopeAgent, "build attempt"), one(scopeScheduler, "queue wait"), one(scopeScheduler, "route")
		if attempt.parentID != start.spanID || wait.parentID != start.spanID || route.parentID != wait.spanID {
			t.Fatalf("want build attempt and queue wait under StartBuild %s, route under queue wait:\n%s", start.spanID, r.dump(root.traceID))
		}
		if attempt.attr("cicd.worker.id") != "e2e-agent" || attempt.attr("kiln.build.attempt") != int64(1) {
			t.Fatalf("attempt span %s: want cicd.worker.id=e2e-agent, kiln.build.attempt=1", attempt)
		}
		if route.attr("kiln.agent") != "e2e-agent" || route.attr("kiln.route.spilled") != false ||
			route.attr("kiln.route.reason") == "" || route.attr("kiln.route.score") == nil {
			t.Fatalf("route span %s: want the chosen agent, its score, spilled=false and a reason", route)
		}

		// One span per step, under the attempt, cached as the step was.
		byStep := map[int64][]span{}
		for _, s := range spans {
			if isStepSpan(s) && s.attr("kiln.build.id") == id {
				step, _ := s.attr("kiln.step.number").(int64)
				byStep[step] = append(byStep[step], s)
			}
		}
		var numbers []int64
		for step := range steps {
			numbers = append(numbers, step)
		}
		sort.Slice(numbers, func(a, b int) bool { return numbers[a] < numbers[b] })
		cachedSpans := 0
		for _, step := range numbers {
			got := byStep[step]
			if len(got) != 1 {
				t.Fatalf("build %d step %d: %d spans, want 1:\n%s", i+1, step, len(got), r.dump(root.traceID))
			}
			s := got[0]
			if s.parentID != attempt.spanID {
				t.Fatalf("step span %s is not under the attempt %s", s, attempt.spanID)
			}
			if cached, ok := s.attr("kiln.step.cached").(bool); !ok || cached != steps[step] {
				t.Fatalf("build %d: step span %s has kiln.step.cached=%v, the step's event says cached=%v", i+1, s, s.attr("kiln.step.cached"), steps[step])
			}
			if !strings.HasPrefix(s.name, fmt.Sprintf("step %d: ", step)) {
				t.Fatalf("step span named %q, want \"step %d: INSTRUCTION\"", s.name, step)
			}
			run := strings.Contains(s.name, "RUN echo trace-"+n)
			if run && i == 0 && steps[step] {
				t.Fatalf("first build: the RUN step of a fresh context is cached: %s", s)
			}
			// BuildKit's cache flag on FROM varies from build to build
			// (it resolves the image each time); kiln does not count FROM
			// in kiln.cache.steps.
			from := strings.HasPrefix(s.name, fmt.Sprintf("step %d: FROM ", step))
			if !from && s.attr("kiln.step.cached") == true {
				cachedSpans++
			}
			if i == 1 && !from && !steps[step] {
				t.Fatalf("second build: step %d not cached: %s", step, s)
			}
		}
		if m := metadata(t, meta); cachedSpans != num(m, "kiln.cache.cached") || (i == 1 && cachedSpans != num(m, "kiln.cache.steps")) {
			t.Fatalf("build %d: %d step spans cached, metadata says %d of %d steps cached", i+1, cachedSpans, num(m, "kiln.cache.cached"), num(m, "kiln.cache.steps"))
		}
		if len(byStep) != len(steps) {
			t.Fatalf("build %d: step spans for steps %v, step events for %v", i+1, byStep, steps)
		}
		t.Logf("build %d: trace %s, %d spans, %d steps %v", i+1, root.traceID, len(spans), len(steps), steps)
	}
}

// TestTraceRedeliveredBuildKeepsItsTrace kills the agent running a build
// mid-RUN (a farm of separate processes, see faultfarm_test.go): the build
// goes to the other agent as attempt 2, and both attempts' spans, with
// the scheduler's queue wait and route span of each, are in the trace the
// client started.
func TestTraceRedeliveredBuildKeepsItsTrace(t *testing.T) {
	r := startOTLPReceiver(t)
	traceEnv(t, r, "grpc")
	engines := enginetest.StartEngines(t, "trace1", "trace2")
	names := []string{"trace-a", "trace-b"}
	f := startFaultFarm(t, faultFarmOptions{}, engines, names...)

	parent, traceID, _ := newTraceParent()
	n := uniq()
	ctx := grpcmetadata.AppendToOutgoingContext(context.Background(), "traceparent", parent)
	id, err := f.trySubmit(ctx, tarContext(t, map[string]string{
		"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo started-%s && sleep 4 && echo done-%s\n", f.base, n, n),
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := f.watch(t, id)
	victim := w.waitEvent(t, time.Minute, "attempt 1 running", isState(running, 1)).GetState().Agent
	w.waitEvent(t, time.Minute, "the RUN step's first line", isLog("started-"+n))
	// The FROM step ended before the RUN started: wait until its span is
	// out of the agent before killing it.
	r.waitSpans(t, 30*time.Second, "attempt 1's FROM step span", inTrace(traceID), func(got []span) bool {
		return slices.ContainsFunc(got, func(s span) bool {
			return isStepSpan(s) && s.attr("kiln.build.attempt") == int64(1) && s.attr("kiln.build.id") == id
		})
	})
	f.agents[victim].kill(t)

	fin := w.finished(t, 2*time.Minute)
	want := otherOf(names, victim)
	if fin.State != succeeded || fin.Agent != want {
		t.Fatalf("build finished %s on %q, want SUCCEEDED on %q", fin.State, fin.Agent, want)
	}
	spans := r.waitSpans(t, 30*time.Second, "attempt 2's spans", inTrace(traceID), func(got []span) bool {
		return slices.ContainsFunc(got, func(s span) bool {
			return s.is(scopeAgent, "build attempt") && s.attr("kiln.build.attempt") == int64(2)
		}) && len(slices.DeleteFunc(slices.Clone(got), func(s span) bool { return !s.is(scopeScheduler, "route") })) == 2
	})
	if stray := r.all(func(s span) bool { return ofBuild(id)(s) && s.traceID != traceID }); len(stray) > 0 {
		t.Fatalf("spans of build %s outside the client's trace %s:\n%v", id, traceID, stray)
	}
	routes := map[int64]string{}
	agentSteps := map[int64]int{}
	services := map[string]bool{}
	for _, s := range spans {
		services[s.service] = true
		attempt, _ := s.attr("kiln.build.attempt").(int64)
		switch {
		case s.is(scopeScheduler, "route"):
			routes[attempt], _ = s.attr("kiln.agent").(string)
		case isStepSpan(s):
			agentSteps[attempt]++
		}
	}
	if routes[1] != victim || routes[2] != want {
		t.Fatalf("route spans by attempt %v, want 1→%s, 2→%s:\n%s", routes, victim, want, r.dump(traceID))
	}
	if agentSteps[1] == 0 || agentSteps[2] < 2 {
		t.Fatalf("step spans by attempt %v, want attempt 1's FROM and attempt 2's FROM and RUN:\n%s", agentSteps, r.dump(traceID))
	}
	for _, svc := range []string{"kiln-gateway", "kiln-scheduler", "kiln-agent"} {
		if !services[svc] {
			t.Fatalf("no span of %s in trace %s:\n%s", svc, traceID, r.dump(traceID))
		}
	}
	var attempt2 span
	for _, s := range spans {
		if s.is(scopeAgent, "build attempt") && s.attr("kiln.build.attempt") == int64(2) {
			attempt2 = s
		}
	}
	if attempt2.attr("cicd.worker.id") != want {
		t.Fatalf("attempt 2's span %s: want cicd.worker.id=%s", attempt2, want)
	}
	t.Logf("trace %s: %d spans; routes %v; step spans by attempt %v", traceID, len(spans), routes, agentSteps)
}
