package farmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BaseImage is the base image the real farm's builds start FROM: static
// busybox in the local registry, which `make dev-env` puts there.
const BaseImage = "127.0.0.1:5000/kiln/busybox:1"

// kilndStopTimeout bounds a graceful stop of kilnd (its agent drains
// first) before it is killed.
const kilndStopTimeout = time.Minute

// Kilnd is a real farm: the kilnd binary (embedded NATS, gateway,
// scheduler and one agent on the local Docker engine) built from this
// repository and run as a child process on free loopback ports. The SDK's
// module depends on the proto module alone, so the farm runs beside the
// test rather than inside it.
type Kilnd struct {
	// Addr is the gateway's gRPC address.
	Addr string

	dir    string
	cmd    *exec.Cmd
	logs   *lockedBuffer
	exited chan struct{}
	err    error // kilnd's exit, once exited is closed
	once   sync.Once
}

// StartKilnd builds cmd/kilnd (go build, in the go.work workspace this
// package is built from), starts it with its state in a new temporary
// directory, and returns once its gateway serves, or ctx's error. It fails
// with a message naming `make dev-env` when the Docker engine or the
// registry's base image (BaseImage) is missing. Stop stops it.
func StartKilnd(ctx context.Context) (*Kilnd, error) {
	if err := checkBaseImage(ctx); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kiln-farmtest-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "kilnd")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kilnbuild/kiln/cmd/kilnd")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("farmtest: go build kilnd: %v\n%s", err, out)
	}
	ready := filepath.Join(dir, "ready.json")
	k := &Kilnd{dir: dir, logs: &lockedBuffer{}, exited: make(chan struct{})}
	k.cmd = exec.Command(bin,
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(dir, "data"), "--ready-file", ready, "--name", "farmtest-agent")
	k.cmd.Stdout, k.cmd.Stderr = k.logs, k.logs
	if err := k.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("farmtest: start kilnd: %w", err)
	}
	go func() {
		k.err = k.cmd.Wait()
		close(k.exited)
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-k.exited:
			k.Stop()
			return nil, fmt.Errorf("farmtest: kilnd exited before it was ready (%v); is the Docker engine up (make dev-env)?\n%s", k.err, k.Logs())
		case <-ctx.Done():
			k.Stop()
			return nil, fmt.Errorf("farmtest: kilnd not ready: %w\n%s", ctx.Err(), k.Logs())
		case <-tick.C:
		}
		data, err := os.ReadFile(ready)
		if err != nil {
			continue
		}
		var addrs struct{ GRPC string }
		if err := json.Unmarshal(data, &addrs); err != nil || addrs.GRPC == "" {
			k.Stop()
			return nil, fmt.Errorf("farmtest: kilnd's ready file %q: %v", data, err)
		}
		k.Addr = addrs.GRPC
		return k, nil
	}
}

// Logs returns what kilnd has logged so far.
func (k *Kilnd) Logs() string { return k.logs.String() }

// Stop stops kilnd (SIGTERM to its pid, SIGKILL if it has not exited
// within a minute) and removes its state.
func (k *Kilnd) Stop() {
	k.once.Do(func() {
		_ = k.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(kilndStopTimeout)
		defer t.Stop()
		select {
		case <-k.exited:
		case <-t.C:
			_ = k.cmd.Process.Kill()
			<-k.exited
		}
		os.RemoveAll(k.dir)
	})
}

// checkBaseImage makes sure the registry holds BaseImage.
func checkBaseImage(ctx context.Context) error {
	repo, tag, _ := strings.Cut(strings.TrimPrefix(BaseImage, "127.0.0.1:5000/"), ":")
	url := "http://127.0.0.1:5000/v2/" + repo + "/manifests/" + tag
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("farmtest: the registry at 127.0.0.1:5000 does not answer (make dev-env starts it): %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("farmtest: the registry has no %s (%s; make dev-env pushes it)", BaseImage, resp.Status)
	}
	return nil
}

// lockedBuffer is kilnd's log, written by its output copier and read by
// the tests.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
