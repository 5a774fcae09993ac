package localfarm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
)

// binDir holds kiln-gateway, kiln-scheduler and kiln-agent built from this
// tree by TestMain, so the test never runs a stale bin/.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "localfarm-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for bin, pkg := range map[string]string{
		"kiln-gateway":   "./gateway/cmd/kiln-gateway",
		"kiln-scheduler": "./scheduler/cmd/kiln-scheduler",
		"kiln-agent":     "./agent/cmd/kiln-agent",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg)
		cmd.Dir = localfarm.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "localfarm test: go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

// needFarmHost skips unless this machine can run engines of its own: root
// (bridges), dockerd and ip.
func needFarmHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("localfarm starts dockerd and makes bridges: needs root")
	}
	for _, b := range []string{"dockerd", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("localfarm needs %s on PATH (make dev-env installs it)", b)
		}
	}
}

func TestFarm(t *testing.T) {
	needFarmHost(t)
	base := enginetest.BusyboxBase(t) // an image in the default engine, to copy
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	farm, err := localfarm.Start(ctx, localfarm.Options{
		NATS: 3, Gateways: 2, Schedulers: 1, Agents: 2,
		Bin:    binDir,
		Images: []string{base},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			if err := farm.Stop(); err != nil {
				t.Error(err)
			}
		}
	}()
	dir := farm.Dir()

	t.Run("ready file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ready.json")
		if err := farm.WriteReadyFile(path); err != nil {
			t.Fatal(err)
		}
		var ready struct {
			Processes []localfarm.Process `json:"processes"`
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &ready); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range ready.Processes {
			names = append(names, p.Name)
			if p.PID <= 0 {
				t.Errorf("%s: pid %d", p.Name, p.PID)
			}
		}
		slices.Sort(names)
		want := []string{"agent-1", "agent-2", "engine-1", "engine-2", "gateway-1", "gateway-2", "nats-1", "nats-2", "nats-3", "scheduler-1"}
		if !slices.Equal(names, want) {
			t.Fatalf("ready file lists %v, want %v", names, want)
		}
		if got := farm.Replicas(); got != 3 {
			t.Errorf("replicas %d, want 3 with 3 NATS nodes", got)
		}
	})

	t.Run("every process answers", func(t *testing.T) {
		for _, p := range farm.Processes() {
			switch p.Role {
			case localfarm.RoleNATS:
				wantOK(t, "http://"+p.HTTP+"/healthz")
			case localfarm.RoleEngine:
				c := engineClient(t, p.Addr)
				if _, err := c.Ping(ctx); err != nil {
					t.Errorf("%s: %v", p.Name, err)
				}
				// BuildKit keeps a loud step's full output only if its
				// dockerd's environment lifts the step log limits.
				environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.PID))
				if err != nil {
					t.Errorf("%s: %v", p.Name, err)
				}
				for _, kv := range engine.StepLogEnv() {
					if !slices.Contains(strings.Split(string(environ), "\x00"), kv) {
						t.Errorf("%s: dockerd's environment lacks %s", p.Name, kv)
					}
				}
			default:
				wantOK(t, "http://"+p.HTTP+"/readyz")
			}
		}
	})

	t.Run("each agent has its own engine", func(t *testing.T) {
		ids := map[string]string{}
		for _, p := range farm.Processes() {
			if p.Role != localfarm.RoleEngine {
				continue
			}
			c := engineClient(t, p.Addr)
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatalf("%s: %v", p.Name, err)
			}
			if other, dup := ids[info.ID]; dup {
				t.Fatalf("%s and %s are the same engine (ID %s)", other, p.Name, info.ID)
			}
			ids[info.ID] = p.Name
			if _, err := c.ImageInspect(ctx, base); err != nil {
				t.Errorf("%s: Options.Images not copied: %v", p.Name, err)
			}
		}
		if len(ids) != 2 {
			t.Fatalf("%d engines, want 2", len(ids))
		}
	})

	t.Run("build FROM scratch through gateway-1", func(t *testing.T) {
		// A deadline so a stuck build fails the test instead of hanging it.
		ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		buildScratch(ctx, t, farm.GatewayAddrs()[0])
	})

	t.Run("a killed NATS node restarts on its address", func(t *testing.T) {
		before, _ := farm.Find("nats-2")
		if err := farm.Kill("nats-2"); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(before.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("nats-2 (pid %d) still there after Kill: %v", before.PID, err)
		}
		if err := farm.Restart(ctx, "nats-2"); err != nil {
			t.Fatal(err)
		}
		after, _ := farm.Find("nats-2")
		if after.Addr != before.Addr || after.HTTP != before.HTTP || after.PID == before.PID || after.PID == 0 {
			t.Fatalf("nats-2 came back as %+v, was %+v", after, before)
		}
		wantOK(t, "http://"+after.HTTP+"/healthz")
	})

	t.Run("a killed gateway restarts on its address", func(t *testing.T) {
		before, _ := farm.Find("gateway-2")
		if err := farm.Kill("gateway-2"); err != nil {
			t.Fatal(err)
		}
		if conn, err := net.DialTimeout("tcp", before.Addr, time.Second); err == nil {
			conn.Close()
			t.Fatalf("gateway-2's address %s still accepts after Kill", before.Addr)
		}
		if err := farm.Restart(ctx, "gateway-2"); err != nil {
			t.Fatal(err)
		}
		after, _ := farm.Find("gateway-2")
		if after.Addr != before.Addr || after.HTTP != before.HTTP || after.PID == before.PID || after.PID == 0 {
			t.Fatalf("gateway-2 came back as %+v, was %+v", after, before)
		}
		c, err := kilnsdk.Dial(ctx, after.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		agents, err := c.Agents(ctx)
		if err != nil {
			t.Fatalf("restarted gateway-2: %v", err)
		}
		if len(agents) != 2 {
			t.Errorf("restarted gateway-2 lists %d agents, want 2", len(agents))
		}
	})

	t.Run("a killed engine restarts with its data", func(t *testing.T) {
		before, _ := farm.Find("engine-2")
		id := engineID(ctx, t, before.Addr)
		if err := farm.Kill("engine-2"); err != nil {
			t.Fatal(err)
		}
		if err := farm.Restart(ctx, "engine-2"); err != nil {
			t.Fatal(err)
		}
		after, _ := farm.Find("engine-2")
		if after.Addr != before.Addr || after.PID == before.PID || after.PID == 0 {
			t.Fatalf("engine-2 came back as %+v, was %+v", after, before)
		}
		if got := engineID(ctx, t, after.Addr); got != id {
			t.Errorf("engine-2 came back as engine %s, was %s", got, id)
		}
		if _, err := engineClient(t, after.Addr).ImageInspect(ctx, base); err != nil {
			t.Errorf("engine-2 lost its images: %v", err)
		}
	})

	procs := farm.Processes()
	bridges := farm.Bridges()
	if len(bridges) != 2 {
		t.Errorf("farm made bridges %v, want one per engine", bridges)
	}
	stopped = true
	if err := farm.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.PID <= 0 {
			t.Errorf("%s has no pid", p.Name)
			continue
		}
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still there after Stop: %v", p.Name, p.PID, err)
		}
	}
	for _, b := range bridges {
		if _, err := net.InterfaceByName(b); err == nil {
			t.Errorf("bridge %s still there after Stop", b)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there after Stop: %v", dir, err)
	}
}

func wantOK(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %s", url, resp.Status)
	}
}

func engineID(ctx context.Context, t *testing.T, host string) string {
	t.Helper()
	info, err := engineClient(t, host).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

func engineClient(t *testing.T, host string) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// buildScratch builds FROM scratch + COPY through the gateway at addr and
// wants it to succeed.
func buildScratch(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n",
		"hello.txt":  "hello from the local farm\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := kilnsdk.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bc, err := kilnsdk.PackContext(ctx, dir, "Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UploadContext(ctx, bc); err != nil {
		t.Fatal(err)
	}
	build, err := c.Build(ctx, kilnsdk.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{}})
	if err != nil {
		t.Fatalf("build through %s: %v", addr, err)
	}
	b, err := build.Wait(ctx)
	if err != nil {
		t.Fatalf("build through %s: %v", addr, err)
	}
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build through %s ended %v", addr, b.GetState())
	}
}
