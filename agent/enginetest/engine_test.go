package enginetest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// TestEngines starts two engines, runs a container on each and checks
// that stopping them leaves nothing behind: no process, bridge, mount or
// directory.
func TestEngines(t *testing.T) {
	ref := BusyboxBase(t)
	var (
		started  []*Engine
		stopping time.Time
	)
	t.Run("run", func(t *testing.T) {
		begin := time.Now()
		started = StartEngines(t, "one", "two")
		t.Logf("two engines answered after %v", time.Since(begin).Round(time.Millisecond))
		t.Cleanup(func() { stopping = time.Now() }) // runs just before the engines stop
		for _, e := range started {
			info, err := e.Client().Info(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(info.DockerRootDir, e.dir+"/") {
				t.Errorf("engine %s has data root %s, want one under %s", e.Name, info.DockerRootDir, e.dir)
			}
			// The container gets its address from the engine's own bridge.
			out := runContainer(t, e, ref, "ip -4 -o addr show eth0")
			if want := bridgeSubnet + "." + strings.TrimPrefix(e.bridge, "kilnbr") + "."; !strings.Contains(out, want) {
				t.Errorf("container on engine %s has address %q, want one in %s0/24", e.Name, out, want)
			}
		}
	})
	if len(started) != 2 {
		t.Fatalf("StartEngines gave %d engines", len(started))
	}
	t.Logf("the engines stopped in %v", time.Since(stopping).Round(time.Millisecond))
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range started {
		select {
		case <-e.exited:
		default:
			t.Errorf("dockerd of engine %s (pid %d) still runs", e.Name, e.cmd.Process.Pid)
		}
		if _, err := os.Stat(e.dir); !os.IsNotExist(err) {
			t.Errorf("directory %s of engine %s is left (%v)", e.dir, e.Name, err)
		}
		if bytes.Contains(mounts, []byte(e.dir)) {
			t.Errorf("mounts under %s are left", e.dir)
		}
		if err := exec.Command("ip", "link", "show", e.bridge).Run(); err == nil {
			t.Errorf("bridge %s of engine %s is left", e.bridge, e.Name)
		}
	}
}

// runContainer runs sh -c script in image on e and returns its output.
func runContainer(t *testing.T, e *Engine, image, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := e.Client()
	created, err := c.ContainerCreate(ctx, &container.Config{Image: image, Cmd: []string{"sh", "-c", script}}, nil, nil, nil, "")
	if err != nil {
		t.Fatalf("engine %s: %v", e.Name, err)
	}
	defer c.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
	waitc, errc := c.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("engine %s: %v", e.Name, err)
	}
	select {
	case res := <-waitc:
		if res.StatusCode != 0 {
			t.Fatalf("engine %s: %q exited %d", e.Name, script, res.StatusCode)
		}
	case err := <-errc:
		t.Fatalf("engine %s: %v", e.Name, err)
	}
	logs, err := c.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		t.Fatal(err)
	}
	return stdout.String() + stderr.String()
}
