package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Binaries built once for the whole package.
var (
	kilndBin     string
	kilnBin      string
	gatewayBin   string
	schedulerBin string
	agentBin     string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kiln-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	kilndBin = filepath.Join(dir, "kilnd")
	kilnBin = filepath.Join(dir, "kiln")
	gatewayBin = filepath.Join(dir, "kiln-gateway")
	schedulerBin = filepath.Join(dir, "kiln-scheduler")
	agentBin = filepath.Join(dir, "kiln-agent")
	for bin, pkg := range map[string]string{
		kilndBin:     "github.com/kilnbuild/kiln/cmd/kilnd",
		kilnBin:      "github.com/kilnbuild/kiln/sdk/cmd/kiln",
		gatewayBin:   "github.com/kilnbuild/kiln/gateway/cmd/kiln-gateway",
		schedulerBin: "github.com/kilnbuild/kiln/scheduler/cmd/kiln-scheduler",
		agentBin:     "github.com/kilnbuild/kiln/agent/cmd/kiln-agent",
	} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	code := m.Run()
	if sharedDir != "" {
		defer os.RemoveAll(sharedDir) // 1 GB and more of blob cache, work dirs and NATS data a run leaves
	}
	if shared != nil {
		shared.stop()
	}
	return code
}

// waitFor polls cond until it holds or the deadline passes; it waits on an
// observable condition, never a fixed time.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		<-tick.C
	}
}

// kilnd is one running kilnd process.
type kilnd struct {
	dataDir string
	cmd     *exec.Cmd
	logs    *bytes.Buffer
	exited  chan struct{}
	err     error
	addrs   struct{ GRPC, HTTP, NATS string }
	// buildkitd is the standalone buildkitd its agent drives; nil when the
	// agent drives the test's Docker engine.
	buildkitd *enginetest.BuildKitdInstance
}

var (
	shared    *kilnd
	sharedDir string // shared's data directory, removed by TestMain after it stops
)

// sharedKilnd returns the kilnd most tests share; TestMain stops it.
func sharedKilnd(t *testing.T) *kilnd {
	t.Helper()
	if shared == nil {
		dir, err := os.MkdirTemp("", "kiln-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		sharedDir = dir
		k, err := startKilnd(dir)
		if err != nil {
			t.Fatal(err)
		}
		shared = k
	}
	return shared
}

// mustStartKilnd starts kilnd as startKilnd does, failing the test if it
// cannot; kilnd stops when the test ends, and its log is printed if the
// test failed.
func mustStartKilnd(t testing.TB, dataDir string, extra ...string) *kilnd {
	t.Helper()
	k, err := startKilnd(dataDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.stop()
		if t.Failed() {
			t.Logf("kilnd log:\n%s", k.logs)
		}
	})
	return k
}

// startKilnd starts kilnd on free ports with dataDir and waits for its
// ready file.
func startKilnd(dataDir string, extra ...string) (*kilnd, error) {
	ready := filepath.Join(dataDir, "ready.json")
	os.Remove(ready)
	args := append([]string{
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(dataDir, "data"), "--ready-file", ready, "--log-level", "debug",
		"--name", "e2e-agent", "--frontend-allow", "127.0.0.1:5000/kiln/dockerfile:*",
	}, extra...)
	k := &kilnd{dataDir: dataDir, cmd: exec.Command(kilndBin, args...), logs: &bytes.Buffer{}, exited: make(chan struct{})}
	k.cmd.Stdout, k.cmd.Stderr = k.logs, k.logs
	if err := k.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { k.err = k.cmd.Wait(); close(k.exited) }()
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-k.exited:
			return nil, fmt.Errorf("kilnd exited before it was ready: %v\n%s", k.err, k.logs)
		case <-deadline:
			k.stop()
			return nil, fmt.Errorf("kilnd not ready after 60s\n%s", k.logs)
		case <-tick.C:
		}
		data, err := os.ReadFile(ready)
		if err != nil {
			continue
		}
		if err := json.Unmarshal(data, &k.addrs); err != nil {
			return nil, fmt.Errorf("ready file: %w", err)
		}
		return k, nil
	}
}

// signal sends sig and waits for the process to exit, returning its error.
func (k *kilnd) signalAndWait(sig syscall.Signal, within time.Duration) error {
	_ = k.cmd.Process.Signal(sig)
	select {
	case <-k.exited:
		return k.err
	case <-time.After(within):
		_ = k.cmd.Process.Kill()
		<-k.exited
		return fmt.Errorf("kilnd did not exit within %s of %v", within, sig)
	}
}

func (k *kilnd) stop() { _ = k.signalAndWait(syscall.SIGTERM, 60*time.Second) }

// client dials the kilnd's gateway.
func (k *kilnd) client(t testing.TB) (kilnv1.BuildServiceClient, kilnv1.ContextServiceClient) {
	t.Helper()
	cc, err := grpc.NewClient(k.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return kilnv1.NewBuildServiceClient(cc), kilnv1.NewContextServiceClient(cc)
}

// result is what one run of the kiln CLI did.
type result struct {
	code           int
	stdout, stderr string
}

// kiln runs the CLI against gateway with args.
func kiln(t testing.TB, gateway string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, args...)
	cmd.Env = append(os.Environ(), "KILN_GATEWAY="+gateway)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("run kiln %v: %v", args, err)
	}
	return r
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s\n--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// writeContext writes files into a new temporary directory.
func writeContext(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// uniq returns a short random suffix so repeated runs use fresh tags.
func uniq() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// metadata reads a --metadata-file.
func metadata(t testing.TB, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("metadata file: %v", err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("metadata file %s: %v", data, err)
	}
	return m
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func num(m map[string]any, k string) int {
	f, _ := m[k].(float64)
	return int(f)
}

func mustContain(t testing.TB, haystack, needle, what string) {
	t.Helper()
	if !strings.Contains(haystack, needle) {
		t.Fatalf("%s does not contain %q:\n%s", what, needle, haystack)
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
