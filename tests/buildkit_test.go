package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestBuildSecretReachesOnlyTheStep: a --secret is readable by a RUN
// --mount=type=secret step and nowhere else — masked in the build log,
// absent from the image, the farm's logs and its NATS storage.
func TestBuildSecretReachesOnlyTheStep(t *testing.T) {
	testBuildSecretReachesOnlyTheStep(t, sharedKilnd(t))
}

func testBuildSecretReachesOnlyTheStep(t *testing.T, k *kilnd) {
	base := enginetest.BusyboxBase(t)
	secret := "tok-" + uniq() + uniq()
	t.Setenv("KILN_E2E_TOKEN", secret)
	tag := "kiln-e2e/secret:" + uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=secret,id=tok echo \"the token is $(cat /run/secrets/tok)\" && echo " + uniq() + " && sha256sum /run/secrets/tok | cut -d' ' -f1 > /sum\n"})
	meta := filepath.Join(t.TempDir(), "meta.json")
	args := []string{"build", "--progress", "plain", "--secret", "id=tok,env=KILN_E2E_TOKEN", "--metadata-file", meta}
	if k.buildkitd != nil {
		// A buildkitd keeps no images: the test's engine gets it from the registry.
		tag = enginetest.Registry(t) + "/" + tag
		args = append(args, "--push")
	}
	r := kiln(t, k.addrs.GRPC, append(args, "-t", tag, dir)...)
	if r.code != 0 {
		t.Fatalf("build with a secret: %s", r)
	}
	t.Cleanup(func() { removeImage(t, tag) })
	k.holdLocally(t, tag)
	mustContain(t, r.stderr, "the token is ****", "build log (the echoed secret, masked)")
	if strings.Contains(r.stderr+r.stdout, secret) {
		t.Fatalf("the CLI's output shows the secret:\n%s", r)
	}
	if got := str(metadata(t, meta), "kiln.builder"); got != "buildkit" {
		t.Fatalf("kiln.builder = %q, want buildkit", got)
	}
	out, code := runImage(t, tag, "cat", "/sum")
	if want := fmt.Sprintf("%x", sha256.Sum256([]byte(secret))); code != 0 || strings.TrimSpace(out) != want {
		t.Fatalf("the step read a secret with sha256 %q (exit %d), want %s", out, code, want)
	}
	if bytes.Contains(saveImage(t, tag), []byte(secret)) {
		t.Fatal("the secret is in the image (its layers, config or history)")
	}
	k.mustNotHold(t, "the secret", secret)

	// The classic builder cannot serve secrets: refused before anything is queued.
	r = kiln(t, k.addrs.GRPC, "build", "--builder", "classic", "--secret", "id=tok,env=KILN_E2E_TOKEN", dir)
	if r.code != 2 {
		t.Fatalf("--secret with --builder classic: want a usage error (exit 2): %s", r)
	}
	mustContain(t, r.stderr, "BuildKit", "the refusal")
}

// TestCacheMountOutlivesTheBuild: a RUN --mount=type=cache step sees what
// the previous build left in the cache, though its input changed.
func TestCacheMountOutlivesTheBuild(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	n := uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nARG V\n" +
		"RUN --mount=type=cache,id=kiln-e2e-" + n + ",target=/cache echo \"$V\" >> /cache/seen && cp /cache/seen /seen\n"})
	tag := "kiln-e2e/cachemount:" + n
	t.Cleanup(func() { removeImage(t, tag) })
	for _, v := range []string{"one", "two"} {
		if r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--build-arg", "V="+v, "-t", tag, dir); r.code != 0 {
			t.Fatalf("build with V=%s: %s", v, r)
		}
	}
	if out, code := runImage(t, tag, "cat", "/seen"); code != 0 || out != "one\ntwo\n" {
		t.Fatalf("the cache mount held %q (exit %d) in the second build, want both builds' lines", out, code)
	}
}

// TestContextSyncSendsOnlyTheChangedFile: after a 200 MB context is built
// once, a build with one file changed makes the agent send the engine
// only that file.
func TestContextSyncSendsOnlyTheChangedFile(t *testing.T) {
	testContextSyncSendsOnlyTheChangedFile(t, sharedKilnd(t))
}

func testContextSyncSendsOnlyTheChangedFile(t *testing.T, k *kilnd) {
	const dockerignore = "ignored/\n"
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile":      "FROM " + base + "\nCOPY data/ /data/\nCOPY app.txt /app.txt\nRUN cat /app.txt\n",
		"app.txt":         "version 1 " + uniq() + "\n",
		".dockerignore":   dockerignore,
		"ignored/big.bin": "never sent",
	})
	const files, size = 20, 10 << 20
	buf := make([]byte, size)
	for i := range files {
		_, _ = rand.Read(buf)
		p := filepath.Join(dir, "data", fmt.Sprintf("blob-%02d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	build := func(what string) map[string]any {
		t.Helper()
		meta := filepath.Join(t.TempDir(), "meta.json")
		r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--metadata-file", meta, dir)
		if r.code != 0 {
			t.Fatalf("%s: %s", what, r)
		}
		return metadata(t, meta)
	}
	first := build("first build")
	if got := num(first, "kiln.context.transferBytes"); got < files*size {
		t.Fatalf("first build sent the engine %d bytes of context, want at least the %d of data/", got, files*size)
	}
	changed := "version 2 " + uniq() + "\n"
	if err := os.WriteFile(filepath.Join(dir, "app.txt"), []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	second := build("second build")
	want := len(changed)
	if k.buildkitd != nil {
		// BuildKit v0.34's Dockerfile frontend reads .dockerignore with
		// file sync's diffing off (dockerui: llb.Differ(DiffNone)), so a
		// buildkitd is sent it whole on every build; Docker 20.10's
		// built-in frontend is not.
		want += len(dockerignore)
	}
	if got := num(second, "kiln.context.transferBytes"); got != want {
		t.Fatalf("second build sent the engine %d bytes of context, want %d: only app.txt changed", got, want)
	}
	if got, want := num(second, "kiln.cache.cached"), 1; got != want {
		t.Fatalf("second build: %d steps cached, want %d (COPY data/)", got, want)
	}
}

// TestBuildKitOnlyDockerfileOnClassicEngine: an agent that offers only the
// classic builder fails a Dockerfile that needs BuildKit, saying why.
func TestBuildKitOnlyDockerfileOnClassicEngine(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	k, err := startKilnd(t.TempDir(), "--builder", "classic")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.stop)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,target=/c echo " + uniq() + "\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", dir)
	if r.code != 1 {
		t.Fatalf("want the build to fail: %s", r)
	}
	mustContain(t, r.stderr, "needs BuildKit", "the failure")
	mustContain(t, r.stderr, "offers only the classic builder", "the failure")
}

// TestFrontendImagesAreRefused: a "# syntax=" line or BUILDKIT_SYNTAX would
// make the engine pull and run a frontend image; the agent refuses both,
// naming the policy, unless --frontend-allow (or the tenant's
// frontend_allow) permits the image.
func TestFrontendImagesAreRefused(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "# syntax=docker/dockerfile:1.7\nFROM " + base + "\nRUN echo " + uniq() + "\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", dir)
	if r.code != 1 {
		t.Fatalf("want the build to fail: %s", r)
	}
	mustContain(t, r.stderr, `# syntax=docker/dockerfile:1.7: refused by policy: the engine would pull and run the Dockerfile frontend image "docker/dockerfile:1.7"`, "the refusal")

	dir = writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo " + uniq() + "\n"})
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--build-arg", "BUILDKIT_SYNTAX=evil/frontend:1", dir)
	if r.code != 1 {
		t.Fatalf("want the build to fail: %s", r)
	}
	mustContain(t, r.stderr, "build arg BUILDKIT_SYNTAX=evil/frontend:1: refused by policy", "the refusal")
}

// TestHeredocsWithAnAllowedFrontend: the farm's own Dockerfile frontend
// image (built from BuildKit's source by scripts/frontend-image.sh), named
// by "# syntax=" and allowed by --frontend-allow, brings heredocs to
// Docker 20.10 engines.
func TestHeredocsWithAnAllowedFrontend(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	frontend := enginetest.DockerfileFrontend(t, enginetest.Registry(t))
	n := uniq()
	tag := "kiln-e2e/heredoc:" + n
	dir := writeContext(t, map[string]string{"Dockerfile": "# syntax=" + frontend + "\nFROM " + base + "\n" +
		"RUN <<EOT\necho run-" + n + " > /from-run\necho second line >> /from-run\nEOT\n" +
		"COPY <<EOF /from-copy\ncopied-" + n + "\nEOF\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "-t", tag, dir)
	if r.code != 0 {
		t.Fatalf("heredoc build: %s", r)
	}
	t.Cleanup(func() { removeImage(t, tag) })
	out, code := runImage(t, tag, "cat", "/from-run", "/from-copy")
	if want := "run-" + n + "\nsecond line\ncopied-" + n + "\n"; code != 0 || out != want {
		t.Fatalf("image files = %q (exit %d), want %q", out, code, want)
	}
}

// removeImage removes a local image by reference.
func removeImage(t *testing.T, ref string) {
	t.Helper()
	_, _ = enginetest.APIClient(t).ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true})
}

// saveImage returns the tar docker save writes for ref.
func saveImage(t *testing.T, ref string) []byte {
	t.Helper()
	rc, err := enginetest.APIClient(t).ImageSave(context.Background(), []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// mustNotHold fails t if kilnd's log or any file in its data dir (where
// JetStream's file store keeps every NATS payload and KV value) holds
// value, nor, when its agent drives a buildkitd, any file in the daemon's
// state directory (its log, content store and snapshots).
func (k *kilnd) mustNotHold(t *testing.T, what, value string) {
	t.Helper()
	if strings.Contains(k.logs.String(), value) {
		t.Fatalf("kilnd's log holds %s", what)
	}
	dirs := []string{k.dataDir}
	if k.buildkitd != nil {
		dirs = append(dirs, k.buildkitd.StateDir)
	}
	for _, dir := range dirs {
		mustNotHoldUnder(t, dir, what, value)
	}
}

// mustNotHoldUnder fails t if a regular file under dir holds value.
func mustNotHoldUnder(t *testing.T, dir, what, value string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(value)) {
			return fmt.Errorf("%s holds %s", p, what)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
