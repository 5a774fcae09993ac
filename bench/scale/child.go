package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/logging"
)

// The benchmark runs NATS and the scheduler as processes of their own, so
// /proc measures each alone: this binary started again with childEnv set
// to "nats" or "scheduler".
const (
	childEnv = "KILN_SCALE_CHILD"
	// natsDirEnv is the NATS child's store; natsURLEnv the scheduler
	// child's server; profileEnv where the scheduler child writes the CPU
	// profile of the span between SIGUSR1 and SIGUSR2.
	natsDirEnv = "KILN_SCALE_NATS_DIR"
	natsURLEnv = "KILN_SCALE_NATS_URL"
	profileEnv = "KILN_SCALE_CPUPROFILE"
	logEnv     = "KILN_SCALE_LOG_LEVEL"
)

// runChild runs the child role named by childEnv, if any, and exits.
func runChild() {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log, err := logging.New(os.Stderr, os.Getenv(logEnv))
	if err != nil {
		log = slog.Default()
	}
	log = log.With("service", role)
	switch role {
	case "nats":
		err = natsChild(ctx)
	case "scheduler":
		err = schedulerChild(ctx, log)
	default:
		err = fmt.Errorf("unknown child role %q", role)
	}
	if err != nil {
		log.Error("child failed", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// natsChild runs the nats-server library with JetStream on files, prints
// its client URL on stdout and serves until told to stop.
func natsChild(ctx context.Context) error {
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: os.Getenv(natsDirEnv), Name: "scale"})
	if err != nil {
		return err
	}
	fmt.Println(ns.ClientURL())
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// schedulerChild runs a scheduler, as kiln-scheduler does, until told to
// stop; SIGUSR1 starts a CPU profile, SIGUSR2 writes it.
func schedulerChild(ctx context.Context, log *slog.Logger) error {
	conn, err := bus.Connect(ctx, os.Getenv(natsURLEnv), "kiln-scheduler")
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := scheduler.New(ctx, scheduler.Config{Conn: conn, Logger: log})
	if err != nil {
		return err
	}
	if path := os.Getenv(profileEnv); path != "" {
		go profileOnSignal(ctx, path, log)
	}
	return s.Run(ctx)
}

func profileOnSignal(ctx context.Context, path string, log *slog.Logger) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sig)
	var f *os.File
	for {
		select {
		case <-ctx.Done():
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
			}
			return
		case s := <-sig:
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(path); err == nil {
					err = pprof.StartCPUProfile(f)
				}
				if err != nil {
					log.Error("cpu profile", "err", err)
					f = nil
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
	}
}

// child is a child process of the benchmark.
type child struct {
	role   string
	log    string // its output
	cmd    *exec.Cmd
	exited chan struct{}
}

// tail is the end of the child's output, for an error.
func (c *child) tail() string {
	data, _ := os.ReadFile(c.log)
	if len(data) > 4096 {
		data = data[len(data)-4096:]
	}
	return string(data)
}

// startChild starts this binary again as role, with env added; its
// output goes to <dir>/<role>.log. stdout, when not nil, gets its stdout.
func startChild(dir, role, logLevel string, env []string, stdout io.Writer) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, role+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c := &child{role: role, log: logPath, cmd: exec.Command(self), exited: make(chan struct{})}
	c.cmd.Env = append(append(os.Environ(), childEnv+"="+role, logEnv+"="+logLevel), env...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if stdout != nil {
		c.cmd.Stdout = stdout
	}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); logf.Close(); close(c.exited) }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop sends SIGTERM, and SIGKILL if it has not exited within grace.
func (c *child) stop(grace time.Duration) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// startNATS starts the NATS child and returns it with its client URL.
func startNATS(dir, logLevel string) (*child, string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer r.Close()
	c, err := startChild(dir, "nats", logLevel, []string{natsDirEnv + "=" + filepath.Join(dir, "nats")}, w)
	w.Close()
	if err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		c.stop(5 * time.Second)
		return nil, "", fmt.Errorf("nats child: no URL (see %s): %w", filepath.Join(dir, "nats.log"), err)
	}
	return c, strings.TrimSpace(line), nil
}
