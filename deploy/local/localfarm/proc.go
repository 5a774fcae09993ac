package localfarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one process of the farm: how to run it, how to tell it serves,
// and the running instance, reaped by its own goroutine.
type proc struct {
	role, name string
	addr, http string
	path       string
	args       []string
	env        []string // KEY=VALUE over the farm's own environment
	logPath    string
	logs       *lockedWriter // nil: the log file only
	// deathSignal is what the kernel sends the process if the farm's
	// process dies without stopping it (dockerd: SIGTERM, so it stops its
	// containerd).
	deathSignal syscall.Signal
	// prepare runs before every start (e.g. removes a stale ready file).
	prepare func() error
	// ready waits until the process serves; it returns early with an error
	// once exited is closed.
	ready func(ctx context.Context, exited <-chan struct{}) error

	mu      sync.Mutex
	pid     int
	done    chan struct{} // closed once the running instance is reaped
	waitErr error
}

func (p *proc) info() Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Process{Role: p.role, Name: p.name, PID: p.pid, Addr: p.addr, HTTP: p.http}
}

// start launches the process and waits until it serves; on failure it
// kills what it launched and returns the tail of its log.
func (p *proc) start(ctx context.Context) error {
	if err := p.launch(); err != nil {
		return err
	}
	return p.waitReady(ctx)
}

// launch starts the process without waiting for it to serve.
func (p *proc) launch() error {
	if p.prepare != nil {
		if err := p.prepare(); err != nil {
			return fmt.Errorf("localfarm: %s: %w", p.name, err)
		}
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("localfarm: %s: %w", p.name, err)
	}
	var out io.Writer = logFile
	var prefixed *prefixWriter
	if p.logs != nil {
		prefixed = &prefixWriter{prefix: p.name + ": ", w: p.logs}
		out = io.MultiWriter(logFile, prefixed)
	}
	fmt.Fprintf(logFile, "=== localfarm: %s %s\n", p.path, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// A child that keeps the output pipe open (dockerd's containerd) must
	// not keep the reaper waiting once the process itself has exited.
	cmd.WaitDelay = 2 * time.Second
	sig := p.deathSignal
	if sig == 0 {
		sig = syscall.SIGKILL
	}
	// Its own process group: a Ctrl-C at the terminal reaches the farm,
	// which stops the processes in order; the death signal stops them if
	// the farm's process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: sig}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("localfarm: start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.pid, p.done, p.waitErr = cmd.Process.Pid, done, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logFile.Close()
		if prefixed != nil {
			prefixed.flush()
		}
		p.mu.Lock()
		p.waitErr = err
		if p.done == done {
			p.pid = 0
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// waitReady waits until the process serves, at most startTimeout; on
// failure it kills the process.
func (p *proc) waitReady(ctx context.Context) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return fmt.Errorf("localfarm: %s is not running", p.name)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	err := p.ready(ctx, done)
	if err == nil {
		return nil
	}
	select {
	case <-done:
		p.mu.Lock()
		werr := p.waitErr
		p.mu.Unlock()
		err = fmt.Errorf("%w (exited: %v)", err, werr)
	default:
		_ = p.kill()
	}
	return fmt.Errorf("localfarm: %s did not serve: %w\n--- tail of %s ---\n%s", p.name, err, p.logPath, tail(p.logPath, 40))
}

// kill SIGKILLs the running instance, if any, and reaps it.
func (p *proc) kill() error {
	done, err := p.signal(syscall.SIGKILL, "kill")
	if done == nil || err != nil {
		return err
	}
	<-done
	return nil
}

// stop SIGTERMs the running instance, SIGKILLs it after grace, and reaps it.
func (p *proc) stop(grace time.Duration) error {
	done, err := p.signal(syscall.SIGTERM, "stop")
	if done == nil || err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	}
	return p.kill()
}

// signal sends sig to the running instance and returns the channel closed
// when it is reaped; nil when no instance is running (never started, or
// already exited). what names the action in the error.
func (p *proc) signal(sig syscall.Signal, what string) (<-chan struct{}, error) {
	p.mu.Lock()
	pid, done := p.pid, p.done
	p.mu.Unlock()
	if done == nil {
		return nil, nil
	}
	select {
	case <-done:
		return nil, nil
	default:
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, fmt.Errorf("localfarm: %s %s (pid %d): %w", what, p.name, pid, err)
	}
	return done, nil
}

// poll calls check until it succeeds, the context ends or the process
// exits, backing off from 20ms to 250ms between tries.
func poll(ctx context.Context, exited <-chan struct{}, check func(context.Context) error) error {
	wait := 20 * time.Millisecond
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-exited:
			t.Stop()
			return fmt.Errorf("process exited (last: %v)", err)
		case <-t.C:
		}
		if wait < 250*time.Millisecond {
			wait *= 2
		}
	}
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePorts picks n distinct free loopback ports, holding them all until
// every one is picked.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("localfarm: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// lookPath finds a binary by path or, without a slash, on PATH.
func lookPath(b string) (string, error) {
	if strings.ContainsRune(b, filepath.Separator) {
		st, err := os.Stat(b)
		if err != nil {
			return "", err
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("not an executable")
		}
		return b, nil
	}
	return exec.LookPath(b)
}

// prefixWriter writes whole lines to w, each with a prefix.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mu     sync.Mutex
	buf    []byte
}

func (pw *prefixWriter) Write(b []byte) (int, error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.buf = append(pw.buf, b...)
	for {
		i := bytes.IndexByte(pw.buf, '\n')
		if i < 0 {
			break
		}
		line := append([]byte(pw.prefix), pw.buf[:i+1]...)
		pw.buf = pw.buf[i+1:]
		if _, err := pw.w.Write(line); err != nil {
			return len(b), nil // the log file has it; a broken extra sink does not stop the process
		}
	}
	return len(b), nil
}

func (pw *prefixWriter) flush() {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if len(pw.buf) > 0 {
		_, _ = pw.w.Write(append(append([]byte(pw.prefix), pw.buf...), '\n'))
		pw.buf = nil
	}
}
