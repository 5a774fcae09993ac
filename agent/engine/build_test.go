package engine_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// recorder is a Reporter that keeps what it was told and can call hooks.
// Build calls it from one goroutine; a test reads it after Build returns.
type recorder struct {
	logs     []string // "step: line"
	started  []string // "step/total instruction"
	finished []finishedStep
	clipped  []string // "step: limit"
	onStart  func(step int, instruction string)
	onLog    func(step int, line string)
}

type finishedStep struct {
	step        int
	instruction string
	cached      bool
	took        time.Duration
}

func (r *recorder) Log(step int, line string) {
	r.logs = append(r.logs, fmt.Sprintf("%d: %s", step, line))
	if r.onLog != nil {
		r.onLog(step, line)
	}
}

func (r *recorder) StepStarted(step, total int, instruction string) {
	r.started = append(r.started, fmt.Sprintf("%d/%d %s", step, total, instruction))
	if r.onStart != nil {
		r.onStart(step, instruction)
	}
}

func (r *recorder) StepFinished(step int, instruction string, cached bool, took time.Duration) {
	r.finished = append(r.finished, finishedStep{step, instruction, cached, took})
}

func (r *recorder) Clipped(step int, limit string) {
	r.clipped = append(r.clipped, fmt.Sprintf("%d: %s", step, limit))
}

var _ engine.Reporter = (*recorder)(nil)

// nonce returns a fresh lower-case token that keeps one test's images,
// containers and cache entries apart from every other run's.
func nonce() string { return strings.ToLower(rand.Text()[:12]) }

// removeImages removes images at the end of the test, with the untagged
// parents that only they used.
func removeImages(t *testing.T, c *client.Client, refs ...*string) {
	t.Cleanup(func() {
		for _, ref := range refs {
			if *ref == "" {
				continue
			}
			_, err := c.ImageRemove(context.Background(), *ref, image.RemoveOptions{Force: true, PruneChildren: true})
			if err != nil && !cerrdefs.IsNotFound(err) {
				t.Errorf("removing image %s: %v", *ref, err)
			}
		}
	})
}

func TestBuildMultiStage(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	tag := "kiln-test/engine-multistage:" + n
	files := map[string]string{
		"Dockerfile": fmt.Sprintf(`FROM %s AS base
RUN echo fresh-%s
ARG GREETING=unset
RUN echo "greeting=$GREETING" > /greeting
FROM base AS app
LABEL stage=app
RUN cat /greeting
FROM base AS never
RUN echo never built && exit 9
`, base, n),
	}
	opts := engine.BuildOptions{
		Tags:      []string{tag},
		BuildArgs: map[string]string{"GREETING": "hello-" + n},
		Target:    "app",
		Labels:    map[string]string{"kiln.test": n},
		Pull:      true,
	}
	var first, second, third engine.Result
	removeImages(t, c, &first.ImageID, &second.ImageID, &third.ImageID)

	var r recorder
	var err error
	first, err = d.Build(t.Context(), enginetest.ContextTar(t, files), opts, &r)
	if err != nil {
		t.Fatalf("first build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	t.Logf("first build: %+v\nlog:\n%s", first, strings.Join(r.logs, "\n"))
	// The engine turns --label into a LABEL step of its own at the end.
	wantStarted := []string{
		"1/8 FROM " + base + " AS base",
		"2/8 RUN echo fresh-" + n,
		"3/8 ARG GREETING=unset",
		`4/8 RUN echo "greeting=$GREETING" > /greeting`,
		"5/8 FROM base AS app",
		"6/8 LABEL stage=app",
		"7/8 RUN cat /greeting",
		"8/8 LABEL kiln.test=" + n,
	}
	if !slices.Equal(r.started, wantStarted) {
		t.Fatalf("steps started:\n%s\nwant:\n%s", strings.Join(r.started, "\n"), strings.Join(wantStarted, "\n"))
	}
	if len(r.finished) != len(wantStarted) {
		t.Fatalf("%d steps finished, want %d: %+v", len(r.finished), len(wantStarted), r.finished)
	}
	for i, f := range r.finished {
		if f.step != i+1 || f.took <= 0 || f.cached {
			t.Fatalf("step %d finished as %+v", i+1, f)
		}
	}
	for _, want := range []string{"2: fresh-" + n, "7: greeting=hello-" + n} {
		if !slices.Contains(r.logs, want) {
			t.Fatalf("log misses %q:\n%s", want, strings.Join(r.logs, "\n"))
		}
	}
	if first.Steps != 6 || first.CachedSteps != 0 || !strings.HasPrefix(first.ImageID, "sha256:") {
		t.Fatalf("first build = %+v, want 6 steps, none cached", first)
	}
	inspect, err := c.ImageInspect(t.Context(), tag)
	if err != nil {
		t.Fatal(err)
	}
	if inspect.ID != first.ImageID {
		t.Fatalf("%s is %s, build returned %s", tag, inspect.ID, first.ImageID)
	}
	if got := inspect.Config.Labels; got["kiln.test"] != n || got["stage"] != "app" {
		t.Fatalf("labels %v", got)
	}

	r = recorder{}
	second, err = d.Build(t.Context(), enginetest.ContextTar(t, files), opts, &r)
	if err != nil {
		t.Fatalf("second build: %v", err)
	}
	if second.Steps != 6 || second.CachedSteps != 6 || second.ImageID != first.ImageID {
		t.Fatalf("second build = %+v, want all 6 steps cached and image %s", second, first.ImageID)
	}
	for _, f := range r.finished {
		if isFrom := strings.HasPrefix(f.instruction, "FROM"); f.cached == isFrom {
			t.Fatalf("second build: step %+v", f)
		}
	}

	r = recorder{}
	opts.NoCache = true
	third, err = d.Build(t.Context(), enginetest.ContextTar(t, files), opts, &r)
	if err != nil {
		t.Fatalf("third build: %v", err)
	}
	if third.Steps != 6 || third.CachedSteps != 0 {
		t.Fatalf("build with NoCache = %+v, want 6 steps, none cached", third)
	}
}

func TestBuildFailure(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)

	t.Run("failing RUN", func(t *testing.T) {
		n := nonce()
		run := fmt.Sprintf("RUN echo output-%s && exit 3", n)
		var r recorder
		_, err := d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{
			"Dockerfile": "FROM " + base + "\n" + run + "\n",
		}), engine.BuildOptions{Tags: []string{"kiln-test/engine-failure:" + n}}, &r)
		var be *engine.BuildError
		if !errors.As(err, &be) {
			t.Fatalf("Build: %v, want a *BuildError", err)
		}
		want := engine.BuildError{
			Step:        2,
			Instruction: run,
			Message:     fmt.Sprintf("The command '/bin/sh -c echo output-%s && exit 3' returned a non-zero code: 3", n),
		}
		if *be != want {
			t.Fatalf("BuildError %+v, want %+v", *be, want)
		}
		if !slices.Contains(r.logs, "2: output-"+n) {
			t.Fatalf("the command's output was not logged:\n%s", strings.Join(r.logs, "\n"))
		}
		if len(r.finished) != 1 {
			t.Fatalf("finished %+v, want only the FROM", r.finished)
		}
		assertNoContainer(t, c, n)
	})

	t.Run("Dockerfile the engine rejects", func(t *testing.T) {
		_, err := d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{
			"Dockerfile": "FROM " + base + "\nFROB nicate\n",
		}), engine.BuildOptions{}, nil)
		var be *engine.BuildError
		if !errors.As(err, &be) || be.Step != 0 || !strings.Contains(be.Message, "unknown instruction: FROB") {
			t.Fatalf("Build: %v, want a *BuildError at step 0 naming the instruction", err)
		}
	})

	t.Run("Dockerfile that is not there", func(t *testing.T) {
		_, err := d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{
			"Dockerfile": "FROM " + base + "\n",
		}), engine.BuildOptions{Dockerfile: "build/Dockerfile.missing"}, nil)
		var be *engine.BuildError
		if !errors.As(err, &be) || be.Step != 0 || !strings.Contains(be.Message, "build/Dockerfile.missing") {
			t.Fatalf("Build: %v, want a *BuildError at step 0 naming the file", err)
		}
	})

	t.Run("base image the registry does not have", func(t *testing.T) {
		missing := enginetest.Registry(t) + "/kiln-test/missing:" + nonce()
		_, err := d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{
			"Dockerfile": "FROM " + missing + "\nRUN true\n",
		}), engine.BuildOptions{}, nil)
		var be *engine.BuildError
		if !errors.As(err, &be) || be.Step != 1 || be.Instruction != "FROM "+missing || !strings.Contains(be.Message, "not found") {
			t.Fatalf("Build: %v, want a *BuildError at step 1 saying the image is not found", err)
		}
	})
}

func TestBuildCancel(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	run := fmt.Sprintf("RUN echo sleeping-%s && sleep 30", n)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stepStarted := make(chan struct{})
	sleeping := make(chan struct{})
	r := &recorder{
		onStart: func(step int, instruction string) {
			if instruction == run {
				close(stepStarted)
			}
		},
		// The RUN's own output shows its container runs: the engine has
		// named it, and there is something to kill.
		onLog: func(step int, line string) {
			if line == "sleeping-"+n {
				close(sleeping)
			}
		},
	}
	type outcome struct {
		res engine.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := d.Build(ctx, enginetest.ContextTar(t, map[string]string{
			"Dockerfile": "FROM " + base + "\n" + run + "\n",
		}), engine.BuildOptions{Tags: []string{"kiln-test/engine-cancel:" + n}}, r)
		done <- outcome{res, err}
	}()

	deadline := time.After(time.Minute)
	for _, ch := range []chan struct{}{stepStarted, sleeping} {
		select {
		case <-ch:
		case o := <-done:
			t.Fatalf("Build returned before the RUN was under way: %+v, %v", o.res, o.err)
		case <-deadline:
			t.Fatal("the RUN did not start within a minute")
		}
	}
	cancelled := time.Now()
	cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Build did not return within 20s of cancelling")
	}
	took := time.Since(cancelled)
	t.Logf("Build returned %v after %v", o.err, took)
	if !errors.Is(o.err, context.Canceled) {
		t.Fatalf("Build: %v, want context.Canceled", o.err)
	}
	if took > 10*time.Second {
		t.Fatalf("Build took %v to return after cancelling", took)
	}
	assertNoContainer(t, c, n)
	if _, err := c.ImageInspect(context.Background(), "kiln-test/engine-cancel:"+n); !cerrdefs.IsNotFound(err) {
		t.Fatalf("the cancelled build's tag exists (err %v)", err)
	}
}

// assertNoContainer fails if any container, running or not, was made for an
// instruction mentioning n.
func assertNoContainer(t *testing.T, c *client.Client, n string) {
	t.Helper()
	list, err := c.ContainerList(context.Background(), container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, ctr := range list {
		if strings.Contains(ctr.Command, n) {
			t.Errorf("container %s (%s, %q) is left from the build", ctr.ID[:12], ctr.State, ctr.Command)
		}
	}
}
