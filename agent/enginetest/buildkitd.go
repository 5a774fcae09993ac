package enginetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// buildkitdScript builds, starts and stops standalone buildkitds; it
	// sits beside frontendScript.
	buildkitdScript = "buildkitd.sh"
	// buildkitdStartTimeout bounds `buildkitd.sh start`: building the pinned
	// buildkitd and buildctl takes minutes with cold Go caches (once per
	// machine: they are cached by version), starting a daemon about a
	// second.
	buildkitdStartTimeout = 10 * time.Minute
	// buildkitdStopTimeout bounds `buildkitd.sh stop` (which itself kills
	// the daemon 30 s after SIGTERM).
	buildkitdStopTimeout = time.Minute
)

// BuildKitdOptions says what kind of buildkitd StartBuildKitd runs.
type BuildKitdOptions struct {
	// Rootless runs the daemon as the unprivileged user kiln-rootless
	// inside RootlessKit (a user namespace, the host's network) instead of
	// as root.
	Rootless bool
}

// BuildKitdInstance is a standalone BuildKit daemon of its own, started by
// scripts/buildkitd.sh for one test or program: the OCI worker on runc, an
// empty root (a cold engine), its socket, configuration, log and pid file
// in StateDir, step logs unclipped and the dev registry plain HTTP to it.
type BuildKitdInstance struct {
	// Addr is the daemon's address as BuildKit's client and kiln's
	// --engine take it: "unix:///tmp/kiln-bk-…/buildkitd.sock".
	Addr string
	// Pid is the daemon's process (RootlessKit's, for a rootless one).
	Pid int
	// StateDir holds the daemon's root, socket, buildkitd.toml and
	// buildkitd.log; it is removed when the daemon stops.
	StateDir string
	// Rootless says whether the daemon runs rootless.
	Rootless bool
	// Buildctl is the path of the pinned buildctl, for driving the daemon
	// directly (`buildctl --addr Addr build …`).
	Buildctl string

	script string
}

// StartBuildKitd starts a buildkitd for the test (rootful, or rootless with
// o.Rootless), in a fresh state directory so each call is a cold engine,
// returns once the daemon lists its workers, and stops it by pid when the
// test ends. The first call on a machine builds buildkitd and buildctl
// (minutes); test processes that race to build take turns through the
// script's lock. It fails the test with the script's output if the daemon
// does not start.
func StartBuildKitd(t testing.TB, o BuildKitdOptions) *BuildKitdInstance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildkitdStartTimeout)
	defer cancel()
	b, err := LaunchBuildKitd(ctx, o)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("enginetest: %v", err)
		}
	})
	return b
}

// LaunchBuildKitd starts a buildkitd as StartBuildKitd does, for a program
// rather than a test (benchmarks). The caller owns the daemon and must Stop
// it.
func LaunchBuildKitd(ctx context.Context, o BuildKitdOptions) (*BuildKitdInstance, error) {
	script, err := findBuildkitdScript()
	if err != nil {
		return nil, err
	}
	// Not t.TempDir: its path (named for the test) may not fit a socket's
	// 107 bytes, and a rootless daemon's user must reach the directory,
	// which t.TempDir's 0700 parent forbids.
	dir, err := os.MkdirTemp("", "kiln-bk-")
	if err != nil {
		return nil, fmt.Errorf("buildkitd state directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("buildkitd state directory: %w", err)
	}
	b := &BuildKitdInstance{StateDir: dir, Rootless: o.Rootless, script: script}
	args := []string{"start", "--state", dir}
	if o.Rootless {
		args = append(args, "--rootless")
	}
	out, err := runScript(ctx, script, args...)
	if err != nil {
		b.removeState()
		return nil, err
	}
	b.Addr = lastLine(out)
	if want := "unix://" + filepath.Join(dir, "buildkitd.sock"); b.Addr != want {
		b.Stop()
		return nil, fmt.Errorf("%s start printed %q last, want %q", script, b.Addr, want)
	}
	pid, err := os.ReadFile(filepath.Join(dir, "buildkitd.pid"))
	if err == nil {
		b.Pid, err = strconv.Atoi(strings.TrimSpace(string(pid)))
	}
	if err != nil {
		b.Stop()
		return nil, fmt.Errorf("buildkitd pid file: %w", err)
	}
	bin, err := BuildKitBin(ctx)
	if err != nil {
		b.Stop()
		return nil, err
	}
	b.Buildctl = filepath.Join(bin, "buildctl")
	return b, nil
}

// BuildKitBin returns the directory holding the pinned buildkitd and
// buildctl, building them first when the dev cache lacks them.
func BuildKitBin(ctx context.Context) (string, error) {
	script, err := findBuildkitdScript()
	if err != nil {
		return "", err
	}
	out, err := runScript(ctx, script, "build")
	if err != nil {
		return "", err
	}
	return lastLine(out), nil
}

// Stop stops the daemon by pid (SIGTERM, SIGKILL past the script's
// deadline) and removes its state directory. It is safe to call twice.
func (b *BuildKitdInstance) Stop() error {
	if b.StateDir == "" {
		return nil
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), buildkitdStopTimeout)
	defer cancel()
	if _, err := runScript(ctx, b.script, "stop", "--state", b.StateDir); err != nil {
		errs = append(errs, err)
		if b.Pid > 0 {
			// The script could not stop it: the process group, so a
			// rootless daemon's RootlessKit child and buildkitd go too.
			_ = syscall.Kill(-b.Pid, syscall.SIGKILL)
		}
	}
	if err := b.removeState(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping buildkitd %s: %w", b.Addr, err)
	}
	return nil
}

// removeState detaches anything still mounted in the state directory (a
// rootful daemon's snapshots mid-build) and removes it.
func (b *BuildKitdInstance) removeState() error {
	dir := b.StateDir
	b.StateDir = ""
	return errors.Join(unmountUnder(dir), os.RemoveAll(dir))
}

// Log returns the daemon's log so far.
func (b *BuildKitdInstance) Log() string {
	body, err := os.ReadFile(filepath.Join(b.StateDir, "buildkitd.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(body)
}

// runScript runs the script with args and returns its stdout; an error
// carries both outputs.
func runScript(ctx context.Context, script string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return "", fmt.Errorf("%s %s: %w\nstdout:\n%s\nstderr:\n%s", script, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// findBuildkitdScript returns the absolute path of scripts/buildkitd.sh,
// found where frontendScript is.
func findBuildkitdScript() (string, error) {
	frontend, err := findFrontendScript()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(frontend), buildkitdScript)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("buildkitd script: %w", err)
	}
	return p, nil
}
