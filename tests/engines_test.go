package tests

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestEnginesBuildKitd runs the end-to-end build, secret, cancel and
// context tests on a kilnd whose agent drives a standalone buildkitd run
// as root (a fresh one: a cold engine), named buildkit:// so the agent
// takes the kind as given.
func TestEnginesBuildKitd(t *testing.T) {
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	k := startKilndOnBuildKitd(t, bk, "buildkit://"+strings.TrimPrefix(bk.Addr, "unix://"))
	if kind, features := agentEngine(t, k); kind != "buildkit" || strings.Contains(features, "rootless") {
		t.Fatalf("the agent reports engine kind %q with features %s, want buildkit, not rootless", kind, features)
	}
	t.Run("build", func(t *testing.T) { testBuildPushMultiStage(t, k, "buildkit") })
	t.Run("secret", func(t *testing.T) { testBuildSecretReachesOnlyTheStep(t, k) })
	t.Run("cancel", func(t *testing.T) { testCancelStopsTheStep(t, k) })
	t.Run("context", func(t *testing.T) { testContextSyncSendsOnlyTheChangedFile(t, k) })
}

// TestEnginesRootlessBuildKitd builds and pushes through a kilnd whose
// agent drives a rootless buildkitd, given as a bare unix:// address so
// the agent asks which kind it is; the pushed image, pulled by the test's
// Docker engine, runs.
func TestEnginesRootlessBuildKitd(t *testing.T) {
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{Rootless: true})
	k := startKilndOnBuildKitd(t, bk, bk.Addr)
	if kind, features := agentEngine(t, k); kind != "buildkit" || !strings.Contains(features, "rootless") {
		t.Fatalf("the agent reports engine kind %q with features %s, want buildkit, rootless", kind, features)
	}
	testBuildPushMultiStage(t, k, "buildkit")
}

// startKilndOnBuildKitd starts a kilnd for the test whose agent drives bk,
// addressed as engine; it stops before bk does.
func startKilndOnBuildKitd(t *testing.T, bk *enginetest.BuildKitdInstance, engine string) *kilnd {
	t.Helper()
	k := mustStartKilnd(t, t.TempDir(), "--engine", engine)
	k.buildkitd = bk
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("buildkitd log:\n%s", bk.Log())
		}
	})
	return k
}

// agentEngine returns the engine kind and features k's agent reports.
func agentEngine(t *testing.T, k *kilnd) (kind, features string) {
	t.Helper()
	var r result
	waitFor(t, time.Minute, "the agent to report its engine", func() bool {
		r = kiln(t, k.addrs.GRPC, "agents", "--format", "{{.Record.EngineKind}}|{{.Record.Features}}")
		return r.code == 0 && strings.TrimSpace(r.stdout) != ""
	})
	kind, features, _ = strings.Cut(strings.TrimSpace(r.stdout), "|")
	return kind, features
}

// holdLocally makes sure the test's Docker engine holds ref: a build on a
// buildkitd leaves its image only in the registry, so it is pulled from
// there (as `docker pull` would); on the test's engine it is already there.
func (k *kilnd) holdLocally(t *testing.T, ref string) {
	t.Helper()
	if k.buildkitd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc, err := enginetest.APIClient(t).ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		t.Fatalf("docker pull %s: %v", ref, err)
	}
	defer rc.Close()
	progress, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("docker pull %s: %v", ref, err)
	}
	if strings.Contains(string(progress), `"error"`) {
		t.Fatalf("docker pull %s:\n%s", ref, progress)
	}
}

// testCancelStopsTheStep cancels a build whose RUN step is running with
// `kiln cancel`: the build ends CANCELLED and the step's process is gone
// from the machine, not left running in the engine.
func testCancelStopsTheStep(t *testing.T, k *kilnd) {
	gw := k.addrs.GRPC
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	marker := "cancel-" + uniq()
	p := startKiln(t, ctx, gw, "build", "--progress", "plain", slowBuild(t, enginetest.BusyboxBase(t), marker, 600))
	p.waitPrinted(t, ctx, 3*time.Minute, regexp.MustCompile("^"+marker+"-3$"))
	id := buildIDOf(t, p.stderrLines())
	if running := processesNaming(marker); len(running) == 0 {
		t.Fatalf("no process on the machine names %s while the step prints it", marker)
	}
	c := kiln(t, gw, "cancel", id)
	if c.code != 0 || c.stdout != id+"\n" {
		t.Fatalf("kiln cancel %s: %s", id, c)
	}
	if rec := inspectBuild(t, gw, id); rec["state"] != "BUILD_STATE_CANCELLED" {
		t.Fatalf("after kiln cancel, build %s is %v", id, rec["state"])
	}
	r := p.wait(t, ctx)
	mustContain(t, r.stderr, "kiln: build "+id+" cancelled", "kiln build's output")
	var left []string
	waitFor(t, time.Minute, "the cancelled step's processes to end", func() bool {
		left = processesNaming(marker)
		return len(left) == 0
	})
}

// processesNaming lists the processes whose command line holds s, as
// "pid: command line".
func processesNaming(s string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			found = append(found, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return found
}
