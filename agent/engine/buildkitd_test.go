package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

func TestBuildKitdPushesCachesAndSyncsOnlyChangedFiles(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	c := enginetest.APIClient(t)
	bk := startBuildKitd(t)
	n := nonce()

	info, err := bk.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("info: %+v", info)
	// scripts/buildkitd.sh builds the daemon at the client's version.
	if info.Kind != engine.KindBuildKit || info.ServerVersion != buildkitClientVersion(t) || info.OS != "linux" || info.Arch == "" || info.StorageDriver == "" ||
		!slices.Equal(info.Builders, []string{"buildkit"}) ||
		!slices.Equal(info.Features, []string{engine.FeatureCacheImport, engine.FeatureCacheExportInline, engine.FeatureCacheExportRegistry, engine.FeaturePushInBuild, engine.FeatureAnnotations, engine.FeatureAttestations, engine.FeatureCall, engine.FeatureNamedContexts}) {
		t.Fatalf("info %+v", info)
	}

	dir := t.TempDir()
	big := strings.Repeat("x", 1<<20)
	writeDir(t, dir, map[string]string{
		"Dockerfile": fmt.Sprintf(`FROM %[1]s AS base
RUN echo fresh-%[2]s > /fresh
ARG GREETING=unset
RUN echo "greeting=$GREETING" > /greeting
FROM base AS app
COPY big.txt /big.txt
COPY app/ /app/
RUN cat /app/main.txt /greeting
FROM base AS never
RUN echo never built && exit 9
`, base, n),
		"big.txt":      big,
		"app/main.txt": "version-1",
	})
	repo := "kiln-test/bkd-app"
	tags := []string{reg + "/" + repo + ":" + n, reg + "/" + repo + ":" + n + "-b"}
	opts := engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{
			Tags:      tags,
			BuildArgs: map[string]string{"GREETING": "hello-" + n},
			Target:    "app",
			Labels:    map[string]string{"kiln.test": n},
			Pull:      true,
		},
		ContextDir: dir,
		SharedKey:  "kiln-test-" + n,
		Push:       true,
	}
	var r recorder
	first, err := bk.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("first build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("first build: %+v\nstarted:\n%s\nlog:\n%s", first, strings.Join(r.started, "\n"), strings.Join(r.logs, "\n"))
	// The step names and counts are Docker's path's: the trace parser reads
	// the same progress.
	if first.Steps != 5 || first.CachedSteps != 0 || !strings.HasPrefix(first.ImageID, "sha256:") {
		t.Fatalf("first build = %+v, want 5 steps (FROM excepted), none cached", first)
	}
	if !slices.ContainsFunc(r.logs, func(l string) bool { return strings.HasSuffix(l, "greeting=hello-"+n) }) {
		t.Fatalf("log lacks the RUN's output:\n%s", strings.Join(r.logs, "\n"))
	}
	if first.ContextBytes < int64(len(big)) {
		t.Fatalf("first build sent %d context bytes, want at least the %d of big.txt", first.ContextBytes, len(big))
	}
	if len(first.Pushed) != 2 {
		t.Fatalf("pushed %+v, want both tags", first.Pushed)
	}
	for i, p := range first.Pushed {
		tag := strings.TrimPrefix(tags[i], reg+"/"+repo+":")
		if want := enginetest.ManifestDigest(t, reg, repo, tag); p.Tag != tags[i] || p.Digest != want || p.Size <= 0 {
			t.Fatalf("pushed %+v, the registry has %s for %s", p, want, tags[i])
		}
	}

	// Docker pulls what was pushed and runs it: the same image.
	removeImages(t, c, &tags[0], &tags[1])
	for _, tag := range tags {
		rc, err := c.ImagePull(t.Context(), tag, image.PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("pull %s: %v", tag, err)
		}
	}
	inspect, err := c.ImageInspect(t.Context(), tags[0])
	if err != nil {
		t.Fatal(err)
	}
	if inspect.ID != first.ImageID || inspect.Config.Labels["kiln.test"] != n {
		t.Fatalf("pulled %s: ID %s labels %v; build returned %s", tags[0], inspect.ID, inspect.Config.Labels, first.ImageID)
	}
	out, err := exec.CommandContext(t.Context(), "docker", "run", "--rm", tags[0], "cat", "/app/main.txt", "/greeting").CombinedOutput()
	if err != nil || string(out) != "version-1greeting=hello-"+n+"\n" {
		t.Fatalf("docker run %s: %v: %q", tags[0], err, out)
	}

	// The same build again: every step from the daemon's cache, nothing
	// but the Dockerfile crosses.
	r = recorder{}
	second, err := bk.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("second build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if second.Steps != first.Steps || second.CachedSteps != second.Steps || second.ImageID != first.ImageID || second.ContextBytes != 0 {
		t.Fatalf("second build = %+v, want all %d steps cached, image %s, no context bytes", second, first.Steps, first.ImageID)
	}
	for _, f := range r.finished {
		if !f.cached && !strings.HasPrefix(f.instruction, "FROM ") { // --pull asks the registry again
			t.Fatalf("second build: step %+v not cached", f)
		}
	}

	// One changed file: only it crosses the session.
	writeDir(t, dir, map[string]string{"app/main.txt": "version-2"})
	r = recorder{}
	third, err := bk.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("third build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if third.ContextBytes != int64(len("version-2")) {
		t.Fatalf("third build sent %d context bytes, want %d (only app/main.txt)", third.ContextBytes, len("version-2"))
	}
	// base's two RUNs and COPY big.txt cached; COPY app/ and RUN rerun.
	if third.Steps != 5 || third.CachedSteps != 3 || third.ImageID == first.ImageID {
		t.Fatalf("third build = %+v, want 5 steps of which the 3 before COPY app/ cached, and a new image; finished %+v", third, r.finished)
	}
}

func TestBuildKitdSecretFailureAndCancel(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	bk := startBuildKitd(t)
	n := nonce()
	secret := "s3cret-" + n
	dir := t.TempDir()

	// The secret reaches the step that mounts it, and only that step.
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf(`FROM %s
RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = %q && echo secret-seen-%s
RUN test ! -e /run/secrets/tok && echo secret-gone-%s
`, base, secret, n, n)})
	var r recorder
	res, err := bk.BuildKit(t.Context(), engine.BuildKitOptions{ // no tags: the image is made all the same
		ContextDir: dir,
		SharedKey:  "kiln-test-" + n,
		Secrets:    map[string][]byte{"tok": []byte(secret)},
	}, &r)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if !strings.HasPrefix(res.ImageID, "sha256:") || len(res.Pushed) != 0 {
		t.Fatalf("untagged build = %+v", res)
	}
	for _, want := range []string{"2: secret-seen-" + n, "3: secret-gone-" + n} {
		if !slices.Contains(r.logs, want) {
			t.Fatalf("log lacks %q (%+v):\n%s", want, res, strings.Join(r.logs, "\n"))
		}
	}

	// A failing RUN is a *BuildError naming its step.
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo ok-%s\nRUN echo fail-%s && exit 3\n", base, n, n)})
	r = recorder{}
	_, err = bk.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + n}, &r)
	var be *engine.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("build error %v (%T), want *BuildError", err, err)
	}
	if be.Step != 3 || be.Instruction != fmt.Sprintf("RUN echo fail-%s && exit 3", n) || !strings.Contains(be.Message, "exit code: 3") {
		t.Fatalf("build error %+v", be)
	}
	if !slices.Contains(r.logs, "3: fail-"+n) {
		t.Fatalf("log lacks the failing step's output:\n%s", strings.Join(r.logs, "\n"))
	}

	// A Dockerfile the frontend rejects is a *BuildError too.
	writeDir(t, dir, map[string]string{"Dockerfile": "FROM " + base + "\nNOPE x\n"})
	_, err = bk.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + n}, nil)
	if !errors.As(err, &be) || !strings.Contains(be.Message, "NOPE") {
		t.Fatalf("bad Dockerfile: %v (%T)", err, err)
	}

	// A build cancelled mid-step stops on the daemon: its process is gone.
	marker := "start-" + n
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo %s && sleep 3600 && echo never\n", base, marker)})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r = recorder{onLog: func(_ int, line string) {
		if line == marker {
			if len(processesWith(t, marker)) == 0 {
				t.Errorf("no process runs the step that printed %s", marker)
			}
			cancel()
		}
	}}
	_, err = bk.BuildKit(ctx, engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + n}, &r)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled build returned %v, want context.Canceled; log:\n%s", err, strings.Join(r.logs, "\n"))
	}
	waitFor(t, "the cancelled step's process to end", func() bool { return len(processesWith(t, marker)) == 0 })
}

func TestBuildKitdRegistryCacheWarmsFreshDaemons(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{
		"Dockerfile": fmt.Sprintf(`FROM %[1]s AS build
RUN echo one-%[2]s > /one
RUN echo two-%[2]s > /two
FROM %[1]s
COPY --from=build /one /two /
COPY changed.txt /changed.txt
RUN cat /changed.txt /one
`, base, n),
		"changed.txt": "first",
	})
	cacheRef := reg + "/kiln-test/bkd-cache:" + n
	missing := reg + "/kiln-test/bkd-cache:missing-" + n
	opts := engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{reg + "/kiln-test/bkd-cached:" + n}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
		Push:         true,
		CacheFrom:    []engine.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": missing}}},
		CacheTo:      []engine.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": cacheRef, "mode": "max"}}},
	}

	// A cold daemon: the missing cache is no failure, and mode=max exports
	// the build stage's steps too.
	var r recorder
	first, err := startBuildKitd(t).BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("first build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("first build: %+v\nlog:\n%s", first, strings.Join(r.logs, "\n"))
	if first.Steps != 5 || first.CachedSteps != 0 {
		t.Fatalf("first build = %+v, want 5 steps, none cached", first)
	}
	if !slices.ContainsFunc(r.logs, func(l string) bool { return strings.Contains(l, missing) }) {
		t.Fatalf("the log does not name the missing cache %s:\n%s", missing, strings.Join(r.logs, "\n"))
	}
	enginetest.ManifestDigest(t, reg, "kiln-test/bkd-cache", n)

	// Another cold daemon importing it, with changed.txt changed: every
	// step before the COPY of it comes from the registry's cache.
	writeDir(t, dir, map[string]string{"changed.txt": "second"})
	opts.CacheFrom = []engine.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": cacheRef}}}
	opts.CacheTo = nil
	second := startBuildKitd(t)
	r = recorder{}
	res, err := second.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("second build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("second build: %+v\nfinished: %+v", res, r.finished)
	for _, f := range r.finished {
		beforeChange := strings.HasPrefix(f.instruction, "RUN echo") || strings.HasPrefix(f.instruction, "COPY --from")
		if !strings.HasPrefix(f.instruction, "FROM") && f.cached != beforeChange {
			t.Fatalf("second build: step %+v (cached %v, want %v)", f, f.cached, beforeChange)
		}
	}
	if res.Steps != 5 || res.CachedSteps != 3 {
		t.Fatalf("second build = %+v, want 5 steps, the 3 before COPY changed.txt cached", res)
	}

	// ExportCache exports the second build's cache on its own, and a third
	// cold daemon builds it entirely from there.
	exportRef := reg + "/kiln-test/bkd-cache:export-" + n
	r = recorder{}
	if err := second.ExportCache(t.Context(), opts, res.Result, engine.CacheOption{Type: "registry", Attrs: map[string]string{"ref": exportRef, "mode": "max"}}, &r); err != nil {
		t.Fatalf("export cache: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if len(r.started) != 0 {
		t.Fatalf("ExportCache reported steps: %v", r.started)
	}
	enginetest.ManifestDigest(t, reg, "kiln-test/bkd-cache", "export-"+n)
	// Inline: the image, with the cache in its config, pushed as the ref.
	if err := second.ExportCache(t.Context(), opts, res.Result, engine.CacheOption{Type: "inline", Attrs: map[string]string{"ref": exportRef + "-inline"}}, nil); err != nil {
		t.Fatalf("export inline cache: %v", err)
	}
	enginetest.ManifestDigest(t, reg, "kiln-test/bkd-cache", "export-"+n+"-inline")
	opts.CacheFrom = []engine.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": exportRef}}}
	opts.Tags = []string{reg + "/kiln-test/bkd-cached:" + n + "-third"}
	r = recorder{}
	third, err := startBuildKitd(t).BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("third build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if third.Steps != 5 || third.CachedSteps != 5 || third.ImageID != res.ImageID {
		t.Fatalf("third build = %+v, want all 5 steps cached and image %s; finished %+v", third, res.ImageID, r.finished)
	}
}

func TestBuildKitdRefusesWhatItCannotDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		tls  engine.TLSConfig
		want string
	}{
		{"tcp://10.0.0.5:1234", engine.TLSConfig{}, "remote and has no TLS"},
		{"http://127.0.0.1:1234", engine.TLSConfig{}, `scheme "http" is not supported`},
		{"unix://", engine.TLSConfig{}, "want an absolute socket path"},
		{"docker:///var/run/docker.sock", engine.TLSConfig{}, "names a Docker engine"},
		{"buildkit://10.0.0.5:1234", engine.TLSConfig{}, "remote and has no TLS"},
		{"tcp://127.0.0.1:1234", engine.TLSConfig{CACert: "ca.pem", Cert: "cert.pem"}, "both the certificate and its key"},
		{"tcp://127.0.0.1:1234", engine.TLSConfig{Cert: "cert.pem", Key: "key.pem"}, "needs the CA certificate"},
	} {
		_, err := engine.NewBuildKitd(t.Context(), tc.addr, tc.tls)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewBuildKitd(%q, %+v) = %v, want an error with %q", tc.addr, tc.tls, err, tc.want)
		}
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	bk, err := engine.NewBuildKitd(t.Context(), "unix://"+sock, engine.TLSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer bk.Close()
	if _, err := bk.Build(t.Context(), nil, engine.BuildOptions{}, nil); err == nil || !strings.Contains(err.Error(), "no classic builder") {
		t.Fatalf("classic build: %v", err)
	}
	if _, _, err := bk.Push(t.Context(), "127.0.0.1:5000/x:1", nil, nil); err == nil || !strings.Contains(err.Error(), "as part of the build") {
		t.Fatalf("push: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := bk.Info(ctx); err == nil {
		t.Fatal("Info of a daemon that is not there answered")
	}
}

// processesWith returns the pids whose command line contains s.
func processesWith(t *testing.T, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// waitFor polls cond until it holds, failing the test if it does not
// within a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

func TestBuildKitdRootless(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	d := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{Rootless: true})
	bk := newBuildKitd(t, d.Addr)
	info, err := bk.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.Features, engine.FeatureRootless) {
		t.Fatalf("a rootless daemon's info %+v lacks %s", info, engine.FeatureRootless)
	}
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo rootless-%s > /r && id -u\n", base, n)})
	var r recorder
	res, err := bk.BuildKit(t.Context(), engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{reg + "/kiln-test/bkd-rootless:" + n}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
		Push:         true,
	}, &r)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if len(res.Pushed) != 1 || res.Pushed[0].Digest != enginetest.ManifestDigest(t, reg, "kiln-test/bkd-rootless", n) {
		t.Fatalf("pushed %+v", res.Pushed)
	}
	// The step ran as root in its container, which is no root outside.
	if !slices.Contains(r.logs, "2: 0") {
		t.Fatalf("log:\n%s", strings.Join(r.logs, "\n"))
	}
}

func TestBuildKitdPushesWithTheBuildsCredentials(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	const user, password = "kiln", "pw-that-must-not-leak-5e0a"
	reg := enginetest.AuthRegistry(t, user, password)
	bk := startBuildKitd(t)
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo auth-%s > /a\n", base, n)})
	opts := engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{reg + "/kiln-test/bkd-auth:" + n}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
		Push:         true,
	}
	var r recorder
	_, err := bk.BuildKit(t.Context(), opts, &r)
	var be *engine.BuildError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "401 Unauthorized") {
		t.Fatalf("push without credentials: %v (%T), want a *BuildError with 401 Unauthorized", err, err)
	}
	t.Logf("without credentials: %v", err)
	opts.Auth = engine.Credentials{reg: {Username: user, Password: password}}
	r = recorder{}
	res, err := bk.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("push with the build's credentials: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if want := manifestDigestAs(t, user, password, reg, "kiln-test/bkd-auth", n); len(res.Pushed) != 1 || res.Pushed[0].Digest != want {
		t.Fatalf("pushed %+v, the registry has %s", res.Pushed, want)
	}
	for _, l := range r.logs {
		if strings.Contains(l, password) {
			t.Fatalf("a log line shows the password: %q", l)
		}
	}
}

// TestBuildKitdKeepsALoudStep: a buildkitd started with engine.StepLogEnv
// (as scripts/buildkitd.sh starts them) passes on every line of a step
// printing 1.3 MB at once, in order, through the same parser as Docker's.
func TestBuildKitdKeepsALoudStep(t *testing.T) {
	t.Parallel()
	const n = 200000
	bk := startBuildKitd(t)
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN seq 1 %d\n", enginetest.BusyboxBase(t), n)})
	var r recorder
	if _, err := bk.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + nonce()}, &r); err != nil {
		t.Fatalf("build: %v", err)
	}
	next := 1
	for _, l := range r.logs {
		if l == "2: "+strconv.Itoa(next) {
			next++
		}
	}
	if next != n+1 || len(r.clipped) != 0 {
		t.Fatalf("the step's lines reached %d of %d in order; clipped: %q; log tail:\n%s", next-1, n, r.clipped, tail(r.logs, 10))
	}
}

// buildkitClientVersion is the version of BuildKit's client module in
// agent/go.mod.
func buildkitClientVersion(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/moby/buildkit (v\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("agent/go.mod requires no github.com/moby/buildkit")
	}
	return string(m[1])
}
