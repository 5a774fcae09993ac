package localfarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/kilnbuild/kiln/agent/engine"
)

// maxBridges bounds the kilnbrN names (and 10.213.N.0/24 subnets) tried.
const maxBridges = 250

// startEngines starts one dockerd per agent — its own data root, exec
// root, socket, trust key (so its own engine ID) and bridge — waits until
// each answers, then copies Options.Images into each.
func (f *Farm) startEngines(ctx context.Context) error {
	var engines []*proc
	for i := 1; i <= f.opts.Agents; i++ {
		p, err := f.engine(i)
		if err != nil {
			return err
		}
		f.add(p)
		if err := p.launch(); err != nil {
			return err
		}
		engines = append(engines, p)
	}
	for _, p := range engines {
		if err := p.waitReady(ctx); err != nil {
			return err
		}
	}
	if len(f.opts.Images) == 0 || len(engines) == 0 {
		return nil
	}
	return f.copyImages(ctx, engines)
}

// engine makes engine-i: its directories, its bridge and its dockerd.
func (f *Farm) engine(i int) (*proc, error) {
	name := fmt.Sprintf("engine-%d", i)
	dir := filepath.Join(f.dir, fmt.Sprintf("e%d", i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localfarm: %w", err)
	}
	// Its own configuration file: a host's /etc/docker/daemon.json (hosts,
	// data root, …) must not leak into the farm's engines, and its own
	// trust key, from which Docker 20.10 derives the engine ID (the shared
	// /etc/docker/key.json would give every engine the same ID).
	conf := filepath.Join(dir, "daemon.json")
	confJSON, _ := json.Marshal(map[string]string{"deprecated-key-path": filepath.Join(dir, "key.json")})
	if err := os.WriteFile(conf, append(confJSON, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("localfarm: %w", err)
	}
	bridge, err := f.claimBridge()
	if err != nil {
		return nil, err
	}
	sock := "unix://" + filepath.Join(dir, "docker.sock")
	if len(sock) > 100 {
		return nil, fmt.Errorf("localfarm: engine socket path %s is too long for a unix socket; use a shorter Dir", sock)
	}
	return &proc{
		role: RoleEngine, name: name, addr: sock,
		path: "dockerd",
		// BuildKit must not clip a loud step's output: kiln keeps full logs.
		env: engine.StepLogEnv(),
		args: []string{
			"--config-file", conf,
			"--data-root", filepath.Join(dir, "root"),
			"--exec-root", filepath.Join(dir, "x"),
			"--pidfile", filepath.Join(dir, "docker.pid"),
			"-H", sock,
			"--bridge", bridge,
			"--iptables=false", "--ip-masq=false",
			"--insecure-registry", "127.0.0.1:5000",
		},
		logPath: f.logPath(name), logs: f.logs,
		deathSignal: syscall.SIGTERM, // dockerd then stops its containerd
		// After a SIGKILL dockerd and its containerd leave pid files behind;
		// a busy machine soon reuses the pids, and dockerd would then wait
		// for a containerd that is some other process.
		prepare: func() error {
			for _, pf := range []string{filepath.Join(dir, "docker.pid"), filepath.Join(dir, "x", "containerd", "containerd.pid")} {
				if err := clearPidFile(pf, dir); err != nil {
					return err
				}
			}
			return nil
		},
		ready: func(ctx context.Context, exited <-chan struct{}) error {
			c, err := client.NewClientWithOpts(client.WithHost(sock), client.WithAPIVersionNegotiation())
			if err != nil {
				return err
			}
			defer c.Close()
			return poll(ctx, exited, func(ctx context.Context) error {
				_, err := c.Ping(ctx)
				return err
			})
		},
	}, nil
}

// bridgeOwners records which process made each kilnbrN bridge, so a farm
// whose process died without Stop (a test killed at its timeout) leaves
// no bridge that blocks the name for good.
const bridgeOwners = "/run/kiln-localfarm"

// claimBridge makes the first free kilnbrN bridge (creating it is the
// claim, so two farms never share one; a bridge whose recorded owner
// process is gone is taken over), gives it 10.213.N.1/24 and brings it
// up; Stop deletes it. Claims are serialised by a lock file.
func (f *Farm) claimBridge() (string, error) {
	if err := os.MkdirAll(bridgeOwners, 0o755); err != nil {
		return "", fmt.Errorf("localfarm: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(bridgeOwners, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("localfarm: %w", err)
	}
	defer lock.Close() // releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("localfarm: lock %s: %w", lock.Name(), err)
	}
	for n := range maxBridges {
		name := fmt.Sprintf("kilnbr%d", n)
		out, err := exec.Command("ip", "link", "add", "name", name, "type", "bridge").CombinedOutput()
		if err != nil && strings.Contains(string(out), "exists") && ownerGone(name) {
			if derr := deleteBridge(name); derr == nil {
				out, err = exec.Command("ip", "link", "add", "name", name, "type", "bridge").CombinedOutput()
			}
		}
		if err != nil {
			if strings.Contains(string(out), "exists") {
				continue
			}
			return "", fmt.Errorf("localfarm: ip link add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
		}
		f.mu.Lock()
		f.bridges = append(f.bridges, name)
		f.mu.Unlock()
		if err := os.WriteFile(filepath.Join(bridgeOwners, name), []byte(processIdentity(os.Getpid())), 0o644); err != nil {
			return "", fmt.Errorf("localfarm: %w", err)
		}
		for _, args := range [][]string{
			{"addr", "add", fmt.Sprintf("10.213.%d.1/24", n), "dev", name},
			{"link", "set", name, "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return "", fmt.Errorf("localfarm: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
		}
		return name, nil
	}
	return "", fmt.Errorf("localfarm: no free bridge name kilnbr0…kilnbr%d", maxBridges-1)
}

// processIdentity is "<pid> <start time>": a pid alone may be reused.
func processIdentity(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 20 {
		return ""
	}
	return fmt.Sprintf("%d %s", pid, f[19]) // starttime, field 22 of stat
}

// ownerGone reports whether the bridge's recorded owner process has
// exited; a bridge without a record (not the farm's, or older) is never
// taken over.
func ownerGone(name string) bool {
	data, err := os.ReadFile(filepath.Join(bridgeOwners, name))
	if err != nil {
		return false
	}
	owner := strings.TrimSpace(string(data))
	pidText, _, ok := strings.Cut(owner, " ")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil {
		return false
	}
	return processIdentity(pid) != owner
}

func deleteBridge(name string) error {
	out, err := exec.Command("ip", "link", "delete", name, "type", "bridge").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot find device") {
		return fmt.Errorf("localfarm: ip link delete %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	_ = os.Remove(filepath.Join(bridgeOwners, name))
	return nil
}

// copyImages saves Options.Images from the default engine once and loads
// the archive into every farm engine.
func (f *Farm) copyImages(ctx context.Context, engines []*proc) error {
	src, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("localfarm: default engine: %w", err)
	}
	defer src.Close()
	archive, err := os.CreateTemp(f.dir, "images-*.tar")
	if err != nil {
		return fmt.Errorf("localfarm: %w", err)
	}
	defer os.Remove(archive.Name())
	defer archive.Close()
	rc, err := src.ImageSave(ctx, f.opts.Images)
	if err != nil {
		return fmt.Errorf("localfarm: docker save %s: %w", strings.Join(f.opts.Images, " "), err)
	}
	_, err = io.Copy(archive, rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("localfarm: docker save %s: %w", strings.Join(f.opts.Images, " "), err)
	}
	for _, e := range engines {
		// A reader of its own per engine: the client closes what it sends.
		if err := loadImages(ctx, e.addr, io.NewSectionReader(archive, 0, 1<<62)); err != nil {
			return fmt.Errorf("localfarm: %s: %w", e.name, err)
		}
	}
	return nil
}

func loadImages(ctx context.Context, host string, archive io.Reader) error {
	c, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.ImageLoad(ctx, archive, client.ImageLoadWithQuiet(true))
	if err != nil {
		return fmt.Errorf("docker load: %w", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("docker load: %w", err)
		}
		if m.Error != nil {
			return fmt.Errorf("docker load: %s", m.Error.Message)
		}
	}
	return nil
}

// clearPidFile removes the pid file pf unless its process still runs with
// owner (the engine's directory) on its command line — then that process
// is the engine's own leftover, and it is SIGKILLed (by pid) first.
func clearPidFile(pf, owner string) error {
	data, err := os.ReadFile(pf)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(cmdline), owner+"/") {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill leftover pid %d of %s: %w", pid, pf, err)
			}
			// Not our child: wait for /proc to drop it, with a deadline.
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil {
					break
				}
				if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(c), owner+"/") {
					break // gone, or a zombie whose cmdline is empty
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("leftover pid %d of %s did not exit after SIGKILL", pid, pf)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if err := os.Remove(pf); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
