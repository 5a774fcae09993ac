package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/jsonmessage"
)

// removalGrace bounds how long a cancelled Build waits for the engine to
// remove the container it was running before removing it itself.
const removalGrace = 15 * time.Second

// BuildOptions are the parts of `docker build` the agent passes on.
type BuildOptions struct {
	Dockerfile string            // path in the context; "" means "Dockerfile"
	Tags       []string          // every tag the image gets, e.g. "127.0.0.1:5000/team/app:1"
	BuildArgs  map[string]string // --build-arg
	Target     string            // --target: the stage to stop at
	Labels     map[string]string // --label
	NoCache    bool              // --no-cache
	Pull       bool              // --pull: always fetch newer base images
	Auth       Credentials       // the build's registry credentials, over this host's
	// Network is the RUN steps' network: "" (the engine's default),
	// "none" or "host" (--network; the agent has checked the policy).
	Network string
	// ExtraHosts are /etc/hosts entries for RUN steps, each "host:ip"
	// (--add-host, as proto/rules/buildflags leaves them).
	ExtraHosts []string
	// ShmSize is RUN steps' /dev/shm size in bytes (0: the engine's).
	ShmSize int64
	// Ulimits are RUN steps' resource limits (--ulimit).
	Ulimits []Ulimit
	// Platform is the platform to build for ("linux/arm64", as
	// proto/rules/platforms spells it; "": the engine's own). The engine
	// sets TARGETPLATFORM, TARGETOS, TARGETARCH and TARGETVARIANT from it
	// as buildx does; one it does not run natively needs emulation.
	Platform string
}

// Ulimit is one --ulimit: a limit name ("nofile") and its soft and hard
// values (-1: unlimited).
type Ulimit struct {
	Name       string
	Soft, Hard int64
}

// Reporter receives a build's progress as it happens. Build calls it on the
// goroutine that called Build, in stream order, and waits for each call.
type Reporter interface {
	// Log receives every line worth showing: "Step N/M : …" lines, the
	// commands' output and the engine's messages. step is the current 1-based
	// step, 0 before the first.
	Log(step int, line string)
	// StepStarted announces step of total, e.g. (2, 5, "RUN echo hi").
	StepStarted(step, total int, instruction string)
	// StepFinished reports a step that completed, whether it came from the
	// cache, and how long it took: from its start to the next step's start or
	// the end of the build. A step that fails is reported by Build's
	// *BuildError instead.
	StepFinished(step int, instruction string, cached bool, took time.Duration)
	// Clipped says the engine dropped some of step's output: BuildKit's
	// step log limit, as the engine names it ("2MiB" for the size,
	// "200KiB/s" for the speed; ClipSetting names the setting that lifts
	// it), was reached. The engine's own notice comes as a Log line too.
	// A step that prints a line like that notice is reported the same way.
	Clipped(step int, limit string)
}

// Result is what a successful build produced.
type Result struct {
	ImageID     string // config digest of the final image, "sha256:…"
	Steps       int    // steps run in all stages built, FROM excepted (--label adds one: a LABEL step at the end)
	CachedSteps int    // of those, the ones the engine took from its cache
}

// BuildError is a build that the engine ran and reported as failed: a command
// that exited non-zero, a base image it cannot pull, a Dockerfile it rejects
// (Step 0). Build's other errors mean the engine could not be asked, stopped
// answering, or the build was cancelled.
type BuildError struct {
	Step        int    // 1-based step that failed; 0 if none had started
	Instruction string // e.g. "RUN exit 3"; "" if no step had started
	Message     string // the engine's message, e.g. "The command '/bin/sh -c exit 3' returned a non-zero code: 3"
}

func (e *BuildError) Error() string {
	if e.Step == 0 {
		return "build failed: " + e.Message
	}
	return fmt.Sprintf("build failed at step %d (%s): %s", e.Step, e.Instruction, e.Message)
}

// Build builds an image from contextTar, an uncompressed tar of the build
// context, with the engine's classic builder, and tags it with every tag in
// o. Intermediate containers are removed, also when a step fails. Progress
// goes to r, which may be nil.
//
// A build that fails returns *BuildError. Cancelling ctx closes the request,
// which makes the engine stop the build and kill the step's container; Build
// then waits for that container to be gone (removing it itself if the engine
// has not within a few seconds) and returns ctx's error.
func (d *Docker) Build(ctx context.Context, contextTar io.Reader, o BuildOptions, r Reporter) (Result, error) {
	if r == nil {
		r = nopReporter{}
	}
	resp, err := d.c.ImageBuild(ctx, contextTar, build.ImageBuildOptions{
		Version:     build.BuilderV1,
		Dockerfile:  o.Dockerfile,
		Tags:        o.Tags,
		BuildArgs:   buildArgs(o.BuildArgs),
		Target:      o.Target,
		Labels:      o.Labels,
		NoCache:     o.NoCache,
		PullParent:  o.Pull,
		Remove:      true,
		ForceRemove: true,
		AuthConfigs: o.Auth.classicAuthConfigs(),
		NetworkMode: o.Network,
		ExtraHosts:  o.ExtraHosts,
		ShmSize:     o.ShmSize,
		Ulimits:     dockerUlimits(o.Ulimits),
		Platform:    o.Platform,
	})
	if err != nil {
		return Result{}, d.requestError(ctx, err)
	}
	defer resp.Body.Close()

	var (
		p       streamParser
		started time.Time
	)
	report := func(events []event) {
		for _, e := range events {
			switch e.kind {
			case eventLog:
				r.Log(e.step, e.line)
			case eventStepStarted:
				started = time.Now()
				r.StepStarted(e.step, e.total, e.instruction)
			case eventStepFinished:
				r.StepFinished(e.step, e.instruction, e.cached, time.Since(started))
			}
		}
	}
	streamErr := decodeMessages(resp.Body, func(m *jsonmessage.JSONMessage) error {
		report(p.feed(m))
		if p.failure != nil {
			return p.failure
		}
		return nil
	})

	if p.failure != nil {
		return Result{}, p.failure
	}
	if streamErr != nil {
		if ctx.Err() == nil {
			return Result{}, fmt.Errorf("build on %s: reading the engine's progress at step %d: %w", d.host, p.step, streamErr)
		}
		err := fmt.Errorf("build cancelled at step %d: %w", p.step, ctx.Err())
		if p.container != "" {
			if rmErr := d.awaitRemoval(ctx, p.container); rmErr != nil {
				err = errors.Join(err, rmErr)
			}
		}
		return Result{}, err
	}
	report(p.finish())
	if p.imageID == "" {
		return Result{}, fmt.Errorf("build on %s: the engine's progress ended at step %d/%d without an image ID", d.host, p.step, p.total)
	}
	return Result{ImageID: p.imageID, Steps: p.steps, CachedSteps: p.cachedSteps}, nil
}

// buildArgs is --build-arg as the Engine API takes it.
func buildArgs(in map[string]string) map[string]*string {
	args := make(map[string]*string, len(in))
	for k, v := range in {
		args[k] = &v
	}
	return args
}

// dockerUlimits is --ulimit as the Engine API takes it.
func dockerUlimits(in []Ulimit) []*container.Ulimit {
	var out []*container.Ulimit
	for _, u := range in {
		out = append(out, &container.Ulimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	return out
}

// requestError says why POST /build was refused: the build was cancelled,
// the engine rejected its Dockerfile (a *BuildError), or the engine failed.
func (d *Docker) requestError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("build: %w", ctx.Err())
	}
	if rejectedDockerfile(err) {
		return &BuildError{Message: strings.TrimPrefix(err.Error(), "Error response from daemon: ")}
	}
	return fmt.Errorf("build on %s: %w", d.host, err)
}

// rejectedDockerfile reports whether the engine refused to start a build
// because of its Dockerfile: a parse error ("dockerfile parse error line 2:
// unknown instruction: FOO", 400) or a missing file, which Docker 20.10
// answers with a 500.
func rejectedDockerfile(err error) bool {
	return cerrdefs.IsInvalidArgument(err) || strings.Contains(err.Error(), "Cannot locate specified Dockerfile")
}

// awaitRemoval waits until the engine has removed container id, which it
// kills and removes when a build's request closes mid-step; a container
// still there after removalGrace is removed by force.
func (d *Docker) awaitRemoval(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removalGrace)
	defer cancel()
	done, errc := d.c.ContainerWait(ctx, id, container.WaitConditionRemoved)
	select {
	case <-done:
		return nil
	case err := <-errc:
		if cerrdefs.IsNotFound(err) {
			return nil // removed before we asked
		}
	}
	rmCtx, cancelRm := context.WithTimeout(context.WithoutCancel(ctx), removalGrace)
	defer cancelRm()
	err := d.c.ContainerRemove(rmCtx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing build container %s: %w", id, err)
	}
	return nil
}

type nopReporter struct{}

func (nopReporter) Log(int, string)                               {}
func (nopReporter) StepStarted(int, int, string)                  {}
func (nopReporter) StepFinished(int, string, bool, time.Duration) {}
func (nopReporter) Clipped(int, string)                           {}
