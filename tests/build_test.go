package tests

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// multiStage has a builder stage, the target stage and a stage after the
// target that must not be built.
const multiStage = `ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
RUN mkdir -p /out && echo "$GREETING from kiln" > /out/greeting
FROM ${BASE} AS final
COPY --from=build /out/greeting /greeting
COPY msg.txt /msg.txt
CMD ["cat", "/greeting", "/msg.txt"]
FROM final AS extra
RUN echo never-built > /extra
`

// runImage runs ref with cmd on the test engine and returns its output.
func runImage(t *testing.T, ref string, cmd ...string) (string, int) {
	t.Helper()
	cli := enginetest.APIClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	created, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: cmd}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatalf("create container of %s: %v", ref, err)
	}
	defer cli.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
	waitC, errC := cli.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start container of %s: %v", ref, err)
	}
	var code int
	select {
	case w := <-waitC:
		code = int(w.StatusCode)
	case err := <-errC:
		t.Fatalf("wait for container: %v", err)
	}
	logs, err := cli.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, logs); err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

// builders are the two builders every end-to-end build test runs with.
var builders = []string{"buildkit", "classic"}

func TestBuildPushMultiStage(t *testing.T) {
	for _, builder := range builders {
		t.Run(builder, func(t *testing.T) { testBuildPushMultiStage(t, sharedKilnd(t), builder) })
	}
}

// testBuildPushMultiStage builds a multi-stage Dockerfile through k with
// builder, pushes it under two tags and runs it.
func testBuildPushMultiStage(t *testing.T, k *kilnd, builder string) {
	reg := enginetest.Registry(t)
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{"Dockerfile": multiStage, "msg.txt": "message " + uniq() + "\n"})
	repo := "kiln-e2e/multi"
	tag := "t" + uniq()
	ref := reg + "/" + repo + ":" + tag
	ref2 := reg + "/" + repo + ":" + tag + "-also"
	meta := filepath.Join(t.TempDir(), "meta.json")
	iid := filepath.Join(t.TempDir(), "iid")

	r := kiln(t, k.addrs.GRPC, "build", "--builder", builder, "--progress", "plain", "-t", ref, "-t", ref2, "--push", "--pull",
		"--build-arg", "BASE="+base, "--build-arg", "GREETING=howdy", "--target", "final",
		"--label", "org.example.team=builds", "--metadata-file", meta, "--iidfile", iid, dir)
	if r.code != 0 {
		t.Fatalf("kiln build failed: %s", r)
	}
	m := metadata(t, meta)
	if got, want := str(m, "containerimage.digest"), enginetest.ManifestDigest(t, reg, repo, tag); got != want {
		t.Fatalf("metadata containerimage.digest = %q, registry has %q", got, want)
	}
	if got := enginetest.ManifestDigest(t, reg, repo, tag+"-also"); got != str(m, "containerimage.digest") {
		t.Fatalf("second tag has digest %s in the registry, want %s", got, str(m, "containerimage.digest"))
	}
	if str(m, "image.name") != ref+","+ref2 {
		t.Fatalf("metadata image.name = %q, want %q", str(m, "image.name"), ref+","+ref2)
	}
	if got := str(m, "kiln.builder"); got != builder {
		t.Fatalf("metadata kiln.builder = %q, want %q", got, builder)
	}
	// --pull makes the classic builder ask the registry for the base image
	// (BuildKit always resolves it: "load metadata for").
	if builder == "classic" && !strings.Contains(r.stderr, "Pulling from") && !strings.Contains(r.stderr, "Image is up to date") {
		t.Fatalf("--pull did not pull the base image:\n%s", r.stderr)
	}
	if str(m, "kiln.build.id") == "" || str(m, "kiln.agent") != "e2e-agent" {
		t.Fatalf("metadata lacks build id or agent: %v", m)
	}
	configDigest := str(m, "containerimage.config.digest")
	if !strings.HasPrefix(configDigest, "sha256:") {
		t.Fatalf("metadata containerimage.config.digest = %q", configDigest)
	}
	// Stages build and final: ARG, RUN, COPY, COPY, CMD, plus the LABEL step
	// the classic builder appends for --label; the global ARG BASE belongs
	// to no stage and stage extra is past the target. BuildKit runs only
	// the instructions that change the filesystem: RUN, COPY, COPY.
	wantSteps := map[string]int{"classic": 6, "buildkit": 3}[builder]
	if got := num(m, "kiln.cache.steps"); got != wantSteps {
		t.Fatalf("kiln.cache.steps = %d, want %d (build and final stages, FROM excluded)\n%s", got, wantSteps, r)
	}
	if strings.Contains(r.stderr, "never-built") {
		t.Fatalf("--target final still built the stage after it:\n%s", r.stderr)
	}

	// The pushed image, pulled back by digest, runs what the Dockerfile put there.
	k.holdLocally(t, ref)
	out, code := runImage(t, ref)
	if code != 0 {
		t.Fatalf("image exited %d: %s", code, out)
	}
	mustContain(t, out, "howdy from kiln", "image output (--build-arg GREETING)")
	mustContain(t, out, "message ", "image output (COPY msg.txt)")
	if _, code := runImage(t, ref, "cat", "/extra"); code == 0 {
		t.Fatal("/extra exists: the stage after --target was built into the image")
	}
	cli := enginetest.APIClient(t)
	inspect, err := cli.ImageInspect(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if inspect.ID != configDigest {
		t.Fatalf("engine image id %s, metadata config digest %s", inspect.ID, configDigest)
	}
	if inspect.Config.Labels["org.example.team"] != "builds" {
		t.Fatalf("--label not applied: labels %v", inspect.Config.Labels)
	}
	data, err := readFile(iid)
	if err != nil || strings.TrimSpace(data) != configDigest {
		t.Fatalf("--iidfile holds %q (%v), want %s", data, err, configDigest)
	}
}

func TestSecondIdenticalBuildIsFullyCached(t *testing.T) {
	for _, builder := range builders {
		t.Run(builder, func(t *testing.T) { testSecondIdenticalBuildIsFullyCached(t, builder) })
	}
}

func testSecondIdenticalBuildIsFullyCached(t *testing.T, builder string) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nARG N=1\nRUN echo step-$N > /n\nCOPY f /f\nWORKDIR /w\nENV A=b\nLABEL x=y\n",
		"f":          "content " + uniq(),
	})
	var steps [2]int
	for i := range 2 {
		meta := filepath.Join(t.TempDir(), "meta.json")
		r := kiln(t, k.addrs.GRPC, "build", "--builder", builder, "--progress", "plain", "--metadata-file", meta, dir)
		if r.code != 0 {
			t.Fatalf("build %d: %s", i+1, r)
		}
		m := metadata(t, meta)
		steps[i] = num(m, "kiln.cache.steps")
		cached := num(m, "kiln.cache.cached")
		// BuildKit runs RUN, COPY and WORKDIR; ARG, ENV and LABEL only
		// change the image config.
		if want := map[string]int{"classic": 6, "buildkit": 3}[builder]; steps[i] != want {
			t.Fatalf("build %d: kiln.cache.steps = %d, want %d\n%s", i+1, steps[i], want, r)
		}
		if i == 0 && cached == steps[i] {
			t.Fatalf("first build of a fresh context reported all %d steps cached", cached)
		}
		if i == 1 && cached != steps[i] {
			t.Fatalf("second identical build: %d of %d steps cached, want all\n%s", cached, steps[i], r)
		}
	}
}

func TestFailingRunExitsOneAndShowsOutput(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	marker := "boom-" + uniq()
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo " + marker + " && exit 3\n",
	})
	engineError := map[string]string{"classic": "non-zero code: 3", "buildkit": "exit code: 3"}
	for _, builder := range builders {
		for _, progress := range []string{"plain", "quiet"} {
			t.Run(builder+"/"+progress, func(t *testing.T) {
				r := kiln(t, k.addrs.GRPC, "build", "--builder", builder, "--progress", progress, dir)
				if r.code != 1 {
					t.Fatalf("want exit 1 for a failing RUN: %s", r)
				}
				mustContain(t, r.stderr, marker, "stderr (the failing command's output)")
				mustContain(t, r.stderr, engineError[builder], "stderr (the engine's error)")
			})
		}
	}
}
