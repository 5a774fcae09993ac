package engine_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// buildkitdBinary is the pinned buildkitd (v0.34.2, as agent/go.mod's
// client) that scripts/buildkitd.sh builds.
const buildkitdBinary = "/tmp/bktools/buildkitd"

// bkDaemon is a rootful buildkitd a test started, with a fresh state
// directory: a cold engine.
type bkDaemon struct {
	Addr string
	Pid  int
	dir  string
}

// startBuildKitd starts a buildkitd (OCI worker, runc) on a unix socket in
// a new directory, its config telling it the test registry speaks plain
// HTTP and its environment lifting the step log limits, and waits until
// it answers. t.Cleanup stops it by pid and removes its state.
func startBuildKitd(t *testing.T) *bkDaemon {
	t.Helper()
	reg := enginetest.Registry(t)
	dir, err := os.MkdirTemp("", "kiln-bk-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "[registry.%q]\n  http = true\n", reg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "buildkitd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d := &bkDaemon{Addr: "unix://" + filepath.Join(dir, "bk.sock"), dir: dir}
	cmd := exec.Command(buildkitdBinary, "--config", cfg, "--root", filepath.Join(dir, "root"), "--addr", d.Addr,
		"--oci-worker=true", "--containerd-worker=false")
	cmd.Env = append(os.Environ(), engine.StepLogEnv()...)
	cmd.Env = append(cmd.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start %s (build it with scripts/buildkitd.sh): %v", buildkitdBinary, err)
	}
	d.Pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { d.stop(t, exited) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := engine.Probe(ctx, d.Addr); err == nil {
			return d
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("buildkitd exited before answering: %v\n%s", err, d.log())
		case <-ctx.Done():
			t.Fatalf("buildkitd did not answer on %s in time\n%s", d.Addr, d.log())
		case <-tick.C:
		}
	}
}

// stop ends the daemon by its pid (SIGTERM, then SIGKILL after a grace
// period), unmounts what it left mounted and removes its directory.
func (d *bkDaemon) stop(t *testing.T, exited chan error) {
	_ = syscall.Kill(d.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-d.Pid, syscall.SIGKILL)
		<-exited
	}
	if err := unmountUnder(d.dir); err != nil {
		t.Errorf("buildkitd cleanup: %v", err)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Errorf("buildkitd cleanup: %v", err)
	}
}

// log returns the daemon's output.
func (d *bkDaemon) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "buildkitd.log"))
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// unmountUnder lazily unmounts every mount point under dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", points[i], err))
		}
	}
	return errors.Join(errs...)
}

// newBuildKitd is a client of d, closed by t.Cleanup.
func newBuildKitd(t *testing.T, d *bkDaemon) *engine.BuildKitd {
	t.Helper()
	b, err := engine.NewBuildKitd(t.Context(), d.Addr, engine.TLSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
