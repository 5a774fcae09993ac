package enginetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// frontendScript makes the Dockerfile frontend image; its path is
	// relative to the repository's root.
	frontendScript = "scripts/frontend-image.sh"
	// frontendTimeout bounds the script: building the frontend from source
	// takes 2 to 8 minutes with cold Go caches (the most on a busy machine),
	// seconds when the binary is cached, and under a second when the
	// registry has the image. Running the script before the tests (as `make
	// test` may) keeps the wait out of them.
	frontendTimeout = 10 * time.Minute
)

var frontends struct {
	mu   sync.Mutex
	refs map[string]frontendResult // by registry
}

type frontendResult struct {
	ref string
	err error
}

// DockerfileFrontend makes sure registry (host:port, e.g. from Registry)
// holds a BuildKit Dockerfile frontend image, built from source by
// scripts/frontend-image.sh, and returns its reference, e.g.
// "127.0.0.1:5000/kiln/dockerfile:v0.34.2". A Dockerfile that starts with
// `# syntax=REF`, or a BuildKit build given --build-arg BUILDKIT_SYNTAX=REF,
// is then parsed by that frontend instead of the engine's built-in one:
// Docker 20.10's has RUN --mount but no heredocs (`RUN <<EOT`, `COPY <<EOF`).
//
// The script runs once per process and registry; the first call waits for
// it (minutes when nothing is cached), and test processes that race to run
// it take turns through the script's lock. It fails the test with the
// script's output if the script fails.
func DockerfileFrontend(t testing.TB, registry string) string {
	t.Helper()
	frontends.mu.Lock()
	defer frontends.mu.Unlock()
	r, ok := frontends.refs[registry]
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), frontendTimeout)
		r.ref, r.err = ensureFrontend(ctx, registry)
		cancel()
		if frontends.refs == nil {
			frontends.refs = map[string]frontendResult{}
		}
		frontends.refs[registry] = r
	}
	if r.err != nil {
		t.Fatalf("enginetest: Dockerfile frontend image: %v", r.err)
	}
	return r.ref
}

func ensureFrontend(ctx context.Context, registry string) (string, error) {
	script, err := findFrontendScript()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "KILN_DEV_REGISTRY="+registry)
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	output := func() string {
		return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %s)", err, frontendTimeout)
		}
		return "", fmt.Errorf("%s: %w\n%s", script, err, output())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	ref := strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(ref, registry+"/") || strings.ContainsAny(ref, " \t") {
		return "", fmt.Errorf("%s printed %q last, want an image reference in %s\n%s", script, ref, registry, output())
	}
	return ref, nil
}

// findFrontendScript returns the absolute path of frontendScript: beside
// this source file's module (../../ from agent/enginetest), else in the
// working directory or one above it.
func findFrontendScript() (string, error) {
	var dirs []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "..", ".."))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, frontendScript)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	return "", errors.New(frontendScript + " not found above this package or the working directory")
}
