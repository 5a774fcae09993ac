package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/services/bus"
)

const (
	// procReadyTimeout bounds how long a farm process may take to write
	// its ready file.
	procReadyTimeout = time.Minute
	// procStopTimeout bounds how long a farm process may take to exit on
	// SIGTERM before it is killed.
	procStopTimeout = 30 * time.Second
)

// farm is a distributed farm on the benchmark's engines, as
// tests/affinity_test.go starts it: one NATS server in this process, and
// kiln-gateway, kiln-scheduler and one single-slot kiln-agent per engine
// (labelled engine=<its name>) as separate processes.
type farm struct {
	gateway   string
	scheduler *proc
	procs     []*proc // in start order; stopped in reverse
	stopNATS  func()
}

// startFarm starts a farm whose state and logs live in dir. On error
// everything it started is stopped.
func startFarm(ctx context.Context, binDir, dir string, engines []*enginetest.Engine, slots int, schedulerArgs []string) (_ *farm, err error) {
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return nil, fmt.Errorf("start NATS: %w", err)
	}
	f := &farm{stopNATS: func() { ns.Shutdown(); ns.WaitForShutdown() }}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.stop())
		}
	}()
	url := ns.ClientURL()
	start := func(bin, name string, args ...string) (*proc, error) {
		p, err := startProc(ctx, filepath.Join(binDir, bin), dir, name, args...)
		if p != nil {
			f.procs = append(f.procs, p)
		}
		return p, err
	}
	gw, err := start("kiln-gateway", "gateway", "--nats-url", url, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	if err != nil {
		return f, err
	}
	f.gateway = gw.addrs["grpc"]
	if f.scheduler, err = start("kiln-scheduler", "scheduler", append([]string{"--nats-url", url, "--http-listen", "127.0.0.1:0"}, schedulerArgs...)...); err != nil {
		return f, err
	}
	for _, e := range engines {
		if _, err := start("kiln-agent", "agent-"+e.Name, "--nats-url", url, "--name", e.Name, "--slots", strconv.Itoa(slots),
			"--docker-host", e.Host, "--labels", "engine="+e.Name, "--http-listen", "127.0.0.1:0",
			"--blob-cache-dir", filepath.Join(dir, "blobs-"+e.Name), "--drain-timeout", "10s"); err != nil {
			return f, err
		}
	}
	return f, nil
}

// stop stops the agents, the scheduler and the gateway (each by its pid,
// clients before what they depend on), then NATS.
func (f *farm) stop() error {
	var errs []error
	for i := len(f.procs) - 1; i >= 0; i-- {
		errs = append(errs, f.procs[i].stop())
	}
	f.procs = nil
	if f.stopNATS != nil {
		f.stopNATS()
		f.stopNATS = nil
	}
	return errors.Join(errs...)
}

// proc is a farm process started with --ready-file, its output in a log
// file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once cmd.Wait returned
	addrs   map[string]string
}

// startProc starts bin with args and --ready-file, and returns once the
// ready file holds its addresses. A proc that started is returned even
// with an error, for the caller to stop.
func startProc(ctx context.Context, bin, dir, name string, args ...string) (*proc, error) {
	ready := filepath.Join(dir, name+".ready.json")
	p := &proc{name: name, logPath: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	p.cmd = exec.Command(bin, append(args, "--ready-file", ready)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	// If the benchmark dies without stopping it, the process still stops.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(procReadyTimeout)
	defer deadline.Stop()
	for {
		if data, err := os.ReadFile(ready); err == nil && json.Unmarshal(data, &p.addrs) == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return p, fmt.Errorf("%s exited before it was ready:\n%s", name, p.logTail(20))
		case <-ctx.Done():
			return p, fmt.Errorf("waiting for %s: %w", name, ctx.Err())
		case <-deadline.C:
			return p, fmt.Errorf("%s not ready after %s:\n%s", name, procReadyTimeout, p.logTail(20))
		case <-tick.C:
		}
	}
}

// stop sends the process SIGTERM and waits for it; past procStopTimeout
// it kills it.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(procStopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("%s (pid %d) did not stop within %s of SIGTERM; killed it", p.name, p.cmd.Process.Pid, procStopTimeout)
}

// log returns the process's output so far.
func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *proc) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
