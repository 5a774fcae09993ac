package engine_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// writeDir writes files into dir, creating parents.
func writeDir(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBuildKitCachesStepsAndSyncsOnlyChangedFiles(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	tag := "kiln-test/engine-buildkit:" + n
	dir := t.TempDir()
	big := strings.Repeat("x", 1<<20)
	writeDir(t, dir, map[string]string{
		"Dockerfile": fmt.Sprintf(`FROM %[1]s AS base
RUN echo fresh-%[2]s > /fresh
FROM base
ARG GREETING=unset
RUN --mount=type=cache,id=%[3]s,target=/cache echo "$GREETING" >> /cache/seen && wc -l < /cache/seen > /seen-count
COPY big.txt /big.txt
COPY app/ /app/
RUN cat /app/main.txt
`, base, n, "kiln-test-"+n),
		"big.txt":      big,
		"app/main.txt": "version-1",
	})
	opts := engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{
			Tags:      []string{tag},
			BuildArgs: map[string]string{"GREETING": "one-" + n},
			Labels:    map[string]string{"kiln.test": n},
		},
		ContextDir: dir,
		SharedKey:  "kiln-test-" + n,
	}
	var first, second engine.BuildKitResult
	removeImages(t, c, &first.ImageID, &second.ImageID)

	var r recorder
	var err error
	first, err = d.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("first build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("first build: %+v\nstarted:\n%s\nlog:\n%s", first, strings.Join(r.started, "\n"), strings.Join(r.logs, "\n"))
	if first.Steps != 5 || first.CachedSteps != 0 {
		t.Fatalf("first build: %d steps, %d cached; want 5, 0", first.Steps, first.CachedSteps)
	}
	if first.ContextBytes < int64(len(big)) {
		t.Fatalf("first build sent %d context bytes, want at least the %d of big.txt", first.ContextBytes, len(big))
	}
	if !slices.ContainsFunc(r.logs, func(l string) bool { return strings.HasSuffix(l, ": version-1") }) {
		t.Fatalf("log lacks the RUN's output:\n%s", strings.Join(r.logs, "\n"))
	}
	for _, f := range r.finished {
		if f.cached && !strings.HasPrefix(f.instruction, "FROM ") {
			t.Fatalf("first build: step %+v reported cached", f)
		}
	}

	// Change one small file and a build arg: the cache mount keeps what
	// the first build wrote, the unchanged steps are cached, and only the
	// changed file crosses the session.
	writeDir(t, dir, map[string]string{"app/main.txt": "version-2"})
	opts.BuildArgs["GREETING"] = "two-" + n
	r = recorder{}
	second, err = d.BuildKit(t.Context(), opts, &r)
	if err != nil {
		t.Fatalf("second build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("second build: %+v\nlog:\n%s", second, strings.Join(r.logs, "\n"))
	if second.ContextBytes != int64(len("version-2")) {
		t.Fatalf("second build sent %d context bytes, want %d (only app/main.txt)", second.ContextBytes, len("version-2"))
	}
	if second.CachedSteps != 1 { // RUN echo fresh; the ARG change reruns the cache-mount RUN and what follows
		t.Fatalf("second build: %d cached steps, want 1; finished %+v", second.CachedSteps, r.finished)
	}
	if got := fileInImage(t, second.ImageID, "seen-count"); strings.TrimSpace(got) != "2" {
		t.Fatalf("cache mount held %q lines on the second build, want 2: the mount was not reused", got)
	}
	if got := fileInImage(t, second.ImageID, "app/main.txt"); got != "version-2" {
		t.Fatalf("app/main.txt in the image = %q", got)
	}
}

func TestBuildKitSecretIsServedAndNotKept(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	secret := "s3cret-" + n
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf(`FROM %s
RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len && sha256sum /run/secrets/tok | cut -d' ' -f1 > /sum && echo %s
`, base, n)})
	var res engine.BuildKitResult
	removeImages(t, c, &res.ImageID)
	var r recorder
	var err error
	res, err = d.BuildKit(t.Context(), engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{"kiln-test/engine-secret:" + n}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
		Secrets:      map[string][]byte{"tok": []byte(secret)},
	}, &r)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if got := strings.TrimSpace(fileInImage(t, res.ImageID, "len")); got != fmt.Sprint(len(secret)) {
		t.Fatalf("the step read %s bytes of the secret, want %d", got, len(secret))
	}
	if got, want := strings.TrimSpace(fileInImage(t, res.ImageID, "sum")), fmt.Sprintf("%x", sha256.Sum256([]byte(secret))); got != want {
		t.Fatalf("the step read a secret with sha256 %s, want %s", got, want)
	}
	saved := saveImage(t, res.ImageID)
	if bytes.Contains(saved, []byte(secret)) {
		t.Fatal("the secret is in the saved image (layers, config or history)")
	}
}

func TestBuildKitRunsIndependentStagesInParallel(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf(`FROM %[1]s AS a
RUN sleep 2 && echo a-%[2]s > /a
FROM %[1]s AS b
RUN sleep 2 && echo b-%[2]s > /b
FROM %[1]s
COPY --from=a /a /a
COPY --from=b /b /b
`, base, n)})
	var res engine.BuildKitResult
	removeImages(t, c, &res.ImageID)
	var (
		r     recorder
		order []string // "start a", "finish b", ... in the order reported
		steps = map[int]string{}
	)
	r.onStart = func(step int, instruction string) {
		if strings.HasPrefix(instruction, "RUN sleep 2") {
			steps[step] = instruction[len(instruction)-len("> /a"):]
			order = append(order, "start "+steps[step])
		}
	}
	rep := &finishHook{recorder: &r, onFinish: func(step int) {
		if s, ok := steps[step]; ok {
			order = append(order, "finish "+s)
		}
	}}
	var err error
	res, err = d.BuildKit(t.Context(), engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{"kiln-test/engine-parallel:" + n}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
	}, rep)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	if len(order) != 4 || !strings.HasPrefix(order[0], "start") || !strings.HasPrefix(order[1], "start") {
		t.Fatalf("the two sleep steps did not overlap: %v", order)
	}
	var sleeps time.Duration
	for _, f := range r.finished {
		if strings.HasPrefix(f.instruction, "RUN sleep 2") {
			if f.took < 2*time.Second {
				t.Fatalf("step %+v took less than its sleep", f)
			}
			sleeps += f.took
		}
	}
	if sleeps < 4*time.Second {
		t.Fatalf("the sleep steps took %v in all, want at least 4s of step time", sleeps)
	}
}

func TestBuildKitReportsFailedStepAndCancels(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo fail-%s && exit 3\n", base, n)})
	var r recorder
	_, err := d.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + n}, &r)
	var be *engine.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("build error %v (%T), want *BuildError", err, err)
	}
	if be.Step != 2 || !strings.HasPrefix(be.Instruction, "RUN echo fail-") || !strings.Contains(be.Message, "exit code: 3") {
		t.Fatalf("build error %+v", be)
	}

	// A build cancelled mid-step stops on the engine.
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo start-%s && sleep 600\n", base, n)})
	ctx, cancel := context.WithCancel(t.Context())
	r = recorder{onLog: func(_ int, line string) {
		if line == "start-"+n {
			cancel()
		}
	}}
	_, err = d.BuildKit(ctx, engine.BuildKitOptions{ContextDir: dir, SharedKey: "kiln-test-" + n}, &r)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled build returned %v, want context.Canceled; log:\n%s", err, strings.Join(r.logs, "\n"))
	}

	// A Dockerfile reached through a symlinked directory is not served:
	// the directory would lead the engine out of the context.
	if err := os.Symlink("/etc", filepath.Join(dir, "etc")); err != nil {
		t.Fatal(err)
	}
	_, err = d.BuildKit(t.Context(), engine.BuildKitOptions{BuildOptions: engine.BuildOptions{Dockerfile: "etc/passwd"}, ContextDir: dir, SharedKey: "kiln-test-" + n}, nil)
	if !errors.As(err, &be) || !strings.Contains(be.Message, "Cannot locate specified Dockerfile: etc/passwd") {
		t.Fatalf("Dockerfile under a symlink: %v", err)
	}

	// A missing Dockerfile is a build error, not an engine failure.
	_, err = d.BuildKit(t.Context(), engine.BuildKitOptions{BuildOptions: engine.BuildOptions{Dockerfile: "nope/Dockerfile"}, ContextDir: dir, SharedKey: "kiln-test-" + n}, nil)
	if !errors.As(err, &be) || !strings.Contains(be.Message, "nope/Dockerfile") {
		t.Fatalf("missing Dockerfile: %v", err)
	}
}

func TestBuildersOffersBuildKit(t *testing.T) {
	t.Parallel()
	got, err := enginetest.Docker(t).Builders(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"buildkit", "classic"}) {
		t.Fatalf("builders %v, want [buildkit classic] on a Linux engine with API ≥ 1.39", got)
	}
}

// finishHook passes a recorder's calls on and calls onFinish after each
// finished step.
type finishHook struct {
	*recorder
	onFinish func(step int)
}

func (h *finishHook) StepFinished(step int, instruction string, cached bool, took time.Duration) {
	h.recorder.StepFinished(step, instruction, cached, took)
	h.onFinish(step)
}

// saveImage returns the tar docker save writes for id.
func saveImage(t *testing.T, id string) []byte {
	t.Helper()
	rc, err := enginetest.APIClient(t).ImageSave(t.Context(), []string{id})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fileInImage reads a file from an image through a container that is
// created, never started, and removed.
func fileInImage(t *testing.T, imageID, name string) string {
	t.Helper()
	c := enginetest.APIClient(t)
	ctr, err := c.ContainerCreate(t.Context(), &container.Config{Image: imageID, Cmd: []string{"true"}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.ContainerRemove(context.Background(), ctr.ID, container.RemoveOptions{Force: true})
	rc, _, err := c.CopyFromContainer(t.Context(), ctr.ID, "/"+name)
	if err != nil {
		t.Fatalf("reading /%s from image %s: %v", name, imageID, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
