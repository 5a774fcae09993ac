package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
	"github.com/kilnbuild/kiln/services/bus"
)

// This file is the resilience tests' harness around package localfarm: a
// farm of separate processes (a NATS cluster, gateways, schedulers, agents
// each on an engine of its own) that the test can SIGKILL and restart by
// name, plus the probes the tests wait on (/readyz, the scheduler leader,
// the registry) and a reader of a build's raw event log.

// localFarm is a running localfarm.Farm and the test that owns it.
type localFarm struct {
	*localfarm.Farm
	t   *testing.T
	dir string

	connOnce sync.Once
	conn     *bus.Conn
	connErr  error

	crashesReported bool // the test reported crashes itself (reportCrashes)
}

// startLocalFarm starts a farm with o, using the binaries TestMain built,
// in a state directory of its own. The farm stops when the test ends; the
// directory (logs under logs/) is kept, and named, if the test failed, and
// the tail of every process's log is printed.
func startLocalFarm(t *testing.T, ctx context.Context, o localfarm.Options) *localFarm {
	t.Helper()
	dir, err := os.MkdirTemp("", "kiln-localfarm-")
	if err != nil {
		t.Fatal(err)
	}
	o.Dir = dir
	if o.Bin == "" {
		o.Bin = filepath.Dir(gatewayBin)
	}
	started := time.Now()
	farm, err := localfarm.Start(ctx, o)
	if err != nil {
		logTails(t, dir, 60)
		t.Fatalf("start local farm %+v: %v (state in %s)", o, err, dir)
	}
	t.Logf("local farm up in %v: %s", time.Since(started).Round(time.Millisecond), processList(farm.Processes()))
	f := &localFarm{Farm: farm, t: t, dir: dir}
	t.Cleanup(func() {
		if f.conn != nil {
			f.conn.Close()
		}
		if err := farm.Stop(); err != nil {
			t.Errorf("stop local farm: %v", err)
		}
		if !f.crashesReported {
			f.reportCrashes()
		}
		if t.Failed() {
			logTails(t, dir, 40)
			t.Logf("local farm state and logs kept in %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove farm state %s: %v", dir, err)
		}
	})
	return f
}

// reportCrashes fails the test for each farm process whose log shows it
// crashed (a Go panic or fatal error), one line each, so that the cause of
// a process that stopped serving is among the first lines of the failure
// rather than in the log tails printed last. A test calls it before its
// own report; otherwise the farm's cleanup does.
func (f *localFarm) reportCrashes() {
	f.t.Helper()
	f.crashesReported = true
	for _, c := range f.crashes() {
		f.t.Errorf("local farm: %s", c)
	}
}

// crashes lists, one line each, the Go panics and fatal errors in the
// farm's process logs: the process, the message and the first frame of
// the goroutine that crashed, e.g. "gateway-2 crashed at 03:46:58: panic:
// runtime error: … in gateway.(*Gateway).WatchBuild.func2
// (…/gateway/watch.go:63)".
func (f *localFarm) crashes() []string {
	logs, _ := filepath.Glob(filepath.Join(f.dir, "logs", "*.log"))
	var out []string
	for _, p := range logs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(p), ".log")
		lines := strings.Split(string(data), "\n")
		for i, l := range lines {
			if !strings.HasPrefix(l, "panic: ") && !strings.HasPrefix(l, "fatal error: ") {
				continue
			}
			crash := fmt.Sprintf("%s crashed%s: %s", name, lastLogTime(lines[:i]), l)
			// The first frame: the line after "goroutine N [running]:"
			// names the function, the next its file and line.
			for j := i + 1; j+2 < len(lines) && j < i+40; j++ {
				if strings.HasPrefix(lines[j], "goroutine ") && strings.HasSuffix(lines[j], ":") {
					fn := lines[j+1]
					if k := strings.LastIndex(fn, "("); k > 0 && strings.HasSuffix(fn, ")") {
						fn = fn[:k]
					}
					file, _, _ := strings.Cut(strings.TrimSpace(lines[j+2]), " +0x")
					crash += fmt.Sprintf(" in %s (%s)", fn, file)
					break
				}
			}
			out = append(out, crash)
		}
	}
	return out
}

// lastLogTime is " after HH:MM:SS.mmm", the time of the last JSON log
// line among lines (a kiln service's slog output), or "" if none has one.
func lastLogTime(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		var rec struct {
			Time time.Time `json:"time"`
		}
		if strings.HasPrefix(lines[i], "{") && json.Unmarshal([]byte(lines[i]), &rec) == nil && !rec.Time.IsZero() {
			return " after " + rec.Time.UTC().Format("15:04:05.000")
		}
	}
	return ""
}

// processList formats processes as "name(pid)" for a log line.
func processList(ps []localfarm.Process) string {
	var names []string
	for _, p := range ps {
		names = append(names, fmt.Sprintf("%s(%d)", p.Name, p.PID))
	}
	return strings.Join(names, " ")
}

// logTails prints the last n lines of every log under dir/logs.
func logTails(t *testing.T, dir string, n int) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, p := range logs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		t.Logf("--- last %d lines of %s\n%s", len(lines), p, strings.Join(lines, "\n"))
	}
}

// named returns the farm's processes of role, in name order.
func (f *localFarm) named(role string) []localfarm.Process {
	var out []localfarm.Process
	for _, p := range f.Processes() {
		if p.Role == role {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b localfarm.Process) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// mustFind returns the process called name.
func (f *localFarm) mustFind(name string) localfarm.Process {
	f.t.Helper()
	p, ok := f.Find(name)
	if !ok {
		f.t.Fatalf("the farm has no process %s: %s", name, processList(f.Processes()))
	}
	return p
}

// serving reports whether the process called name serves: 200 on /readyz
// for a kiln service, on /healthz for a NATS node (its monitoring port).
func (f *localFarm) serving(name string) bool {
	p, ok := f.Find(name)
	if !ok || p.HTTP == "" {
		return false
	}
	path := "/readyz"
	if p.Role == "nats" {
		path = "/healthz"
	}
	return httpOK("http://" + p.HTTP + path)
}

// httpOK reports whether GET url answers 200 within a few seconds.
func httpOK(url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// metricValue reads the sample of /metrics at httpAddr whose name and
// labels are exactly series (e.g. `kiln_scheduler_leader` or
// `kiln_gateway_builds_started_total{kind="queued"}`).
func metricValue(httpAddr, series string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no sample %s", httpAddr, series)
}

// leader returns the scheduler whose kiln_scheduler_leader gauge reads 1,
// or "" if none does (an election in progress), among the schedulers
// named in among (all of them if empty).
func (f *localFarm) leader(among ...string) string {
	for _, p := range f.named("scheduler") {
		if len(among) > 0 && !slices.Contains(among, p.Name) {
			continue
		}
		if v, err := metricValue(p.HTTP, "kiln_scheduler_leader"); err == nil && v == 1 {
			return p.Name
		}
	}
	return ""
}

// waitUntil polls cond every 50ms until it holds, returning how long that
// took, or an error naming what once within has passed or ctx ends. It
// touches no testing.TB, so goroutines may call it.
func waitUntil(ctx context.Context, within time.Duration, what string, cond func() bool) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("waited %v for %s: %w", time.Since(start).Round(time.Millisecond), what, ctx.Err())
		case <-tick.C:
		}
	}
	return time.Since(start), nil
}

// busConn is the test's own NATS connection with the gateway's credential,
// to read raw event logs as the gateway does.
func (f *localFarm) busConn(ctx context.Context) (*bus.Conn, error) {
	f.connOnce.Do(func() {
		opts, err := bus.ClientAuth{NkeyFile: f.Seeds().File(bus.RoleGateway, "")}.Options()
		if err != nil {
			f.connErr = err
			return
		}
		f.conn, f.connErr = bus.Connect(ctx, f.NATSURL(), "kiln-resilience-test", opts...)
	})
	return f.conn, f.connErr
}

// rawEventLog reads a build's whole event log from stream KILN_EVENTS, past
// the first finished event where WatchBuild stops, so a test can count
// every finished event the farm ever wrote for the build. It touches no
// testing.TB, so goroutines may call it.
// A read that fails (a node still catching up after a restart answers no
// JetStream API request) is tried again for up to 30s.
func (f *localFarm) rawEventLog(ctx context.Context, id string) ([]*kilnv1.BuildEvent, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var evs []*kilnv1.BuildEvent
	var err error
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if evs, err = f.readEventLog(ctx, id); err == nil {
			return evs, nil
		}
		select {
		case <-ctx.Done():
			return evs, err
		case <-tick.C:
		}
	}
}

func (f *localFarm) readEventLog(ctx context.Context, id string) ([]*kilnv1.BuildEvent, error) {
	conn, err := f.busConn(ctx)
	if err != nil {
		return nil, fmt.Errorf("event log of %s: %w", id, err)
	}
	subject := bus.EventsSubject(id)
	stream, err := conn.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("event log of %s: %w", id, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, fmt.Errorf("event log of %s: %w", id, err)
	}
	want := int(info.State.Subjects[subject])
	if want == 0 {
		return nil, nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, fmt.Errorf("event log of %s: %w", id, err)
	}
	out := make([]*kilnv1.BuildEvent, 0, want)
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return out, fmt.Errorf("event log of %s: %w", id, err)
		}
		n := 0
		for msg := range batch.Messages() {
			ev := &kilnv1.BuildEvent{}
			if err := bus.Decode(msg.Data(), ev); err != nil {
				return out, fmt.Errorf("event log of %s: %w", id, err)
			}
			out = append(out, ev)
			n++
		}
		if n == 0 {
			return out, fmt.Errorf("event log of %s: read %d of %d events: %v", id, len(out), want, batch.Error())
		}
	}
	return out, nil
}

// dialFarm returns an SDK client of the gateways at addrs (the first is
// the one it prefers), closed when the test ends.
func dialFarm(t testing.TB, addrs []string, opts ...kilnsdk.Option) *kilnsdk.Client {
	t.Helper()
	c, err := kilnsdk.Dial(t.Context(), strings.Join(addrs, ","), opts...)
	if err != nil {
		t.Fatalf("dial %v: %v", addrs, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// replay reads a build's events through WatchBuild from sequence 0, as
// a client that starts watching after the fact sees them: up to and
// including the first finished event.
func replay(ctx context.Context, c *kilnsdk.Client, id string) ([]*kilnv1.BuildEvent, error) {
	stream, err := c.BuildService().WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
	if err != nil {
		return nil, err
	}
	var evs []*kilnv1.BuildEvent
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return evs, nil
		}
		if err != nil {
			return evs, err
		}
		evs = append(evs, resp.GetEvent())
	}
}

// manifestDigest asks the registry, with a HEAD, for the digest of
// repo:tag's manifest; "" if it has none.
func manifestDigest(ctx context.Context, registry, repo, tag string) (string, error) {
	url := fmt.Sprintf("http://%s/v2/%s/manifests/%s", registry, repo, tag)
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", strings.Join([]string{
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.oci.image.index.v1+json",
	}, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Header.Get("Docker-Content-Digest"), nil
	case http.StatusNotFound:
		return "", nil
	default:
		return "", fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
}

// packDir packs a context directory for the SDK (Dockerfile at its root).
func packDir(ctx context.Context, dir string) (*kilnsdk.Context, error) {
	return kilnsdk.PackContext(ctx, dir, "Dockerfile")
}

// replicaView lists, for each stream, the last sequence every NATS node
// holds in its replica (/jsz on its monitoring port) and which node leads:
// replicas that disagree long after a write show a node serving stale
// reads (KV gets are direct gets, which any replica answers).
func (f *localFarm) replicaView(ctx context.Context) string {
	type replica struct {
		node    string
		lastSeq uint64
	}
	streams := map[string][]replica{}
	leaders := map[string]string{}
	var b strings.Builder
	for _, p := range f.named("nats") {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.HTTP+"/jsz?streams=true", nil)
		if err != nil {
			cancel()
			continue
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			fmt.Fprintf(&b, "%s: /jsz: %v\n", p.Name, err)
			continue
		}
		var info server.JSInfo
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		cancel()
		if err != nil {
			fmt.Fprintf(&b, "%s: /jsz: %v\n", p.Name, err)
			continue
		}
		for _, acc := range info.AccountDetails {
			for _, s := range acc.Streams {
				streams[s.Name] = append(streams[s.Name], replica{p.Name, s.State.LastSeq})
				if s.Cluster != nil && s.Cluster.Leader != "" {
					leaders[s.Name] = s.Cluster.Leader
				}
			}
		}
	}
	names := slices.Sorted(maps.Keys(streams))
	for _, name := range names {
		fmt.Fprintf(&b, "%s (leader %s):", name, leaders[name])
		for _, r := range streams[name] {
			fmt.Fprintf(&b, " %s last_seq %d;", r.node, r.lastSeq)
		}
		b.WriteString("\n")
	}
	return b.String()
}
