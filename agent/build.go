package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// Why a build's context ended early.
var (
	errDrained   = agentproto.ErrDrained
	errCancelled = errors.New("build cancelled")
	errLost      = errors.New("build was given to another attempt")
)

// finishTimeout bounds the writes that record a build's end.
const finishTimeout = 30 * time.Second

// runBuild runs one assigned build to its end. work is the agent's work
// context: it outlives a stop request by the drain timeout.
func (a *Agent) runBuild(work context.Context, assigned *kilnv1.Build) {
	log := a.log.With("build_id", assigned.Id, "attempt", assigned.Attempt)
	work, span := startAttempt(work, assigned, a.cfg.Name)
	defer span.End()
	ctx, cancel := context.WithCancelCause(work)
	defer cancel(nil)

	now := time.Now()
	// Listen for a cancel before the start: one sent before is in the
	// record the start answers with.
	sub, err := a.cfg.Conn.NC.Subscribe(bus.CancelSubject(assigned.Id), func(*nats.Msg) { cancel(errCancelled) })
	if err != nil {
		log.WarnContext(ctx, "subscribe to cancellations", "err", err)
	} else {
		defer sub.Unsubscribe()
	}
	// The scheduler marks it RUNNING and says so in its log; everything
	// the agent writes about the build goes through it, fenced by agent
	// and attempt.
	at, b, err := a.client.Start(ctx, assigned, a.cfg.Lease, agentproto.Hooks{
		Fenced: func(err error) {
			log.WarnContext(ctx, "lost the build; stopping it", "err", err)
			cancel(errLost)
		},
		Failed: func(err error) { log.Warn("report build events", "err", err) },
	})
	if err != nil {
		log.WarnContext(ctx, "could not start assigned build", "err", err)
		return
	}
	ev := &events{at: at, logger: log}
	log.InfoContext(ctx, "build running")
	if b.CancelRequested {
		cancel(errCancelled)
	}

	renewCtx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		a.renewLease(renewCtx, at, cancel, log)
	}()
	result, warm, buildErr := a.execute(ctx, b, ev)
	endAttempt(span, result, buildErr, context.Cause(ctx))
	stopRenew()
	<-renewed
	succeeded := a.finish(work, b, result, buildErr, context.Cause(ctx), ev, log)
	observeBuild(result, buildErr, context.Cause(ctx), now)
	if succeeded && warm != nil {
		a.startExport(work, b, ev.at, warm, log) // after the result: it never delays it
	} else {
		warm.drop()
	}
}

// renewLease extends the build's lease every third of the lease until ctx
// ends; it cancels the build when the record was given to another attempt
// or a cancel was requested.
func (a *Agent) renewLease(ctx context.Context, at *agentproto.Attempt, cancel context.CancelCauseFunc, log *slog.Logger) {
	t := time.NewTicker(a.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := at.Renew(ctx, a.cfg.Lease)
		switch {
		case errors.Is(err, buildstore.ErrFenced):
			log.WarnContext(ctx, "lost the build's lease; stopping it", "err", err)
			cancel(errLost)
			return
		case err != nil:
			if ctx.Err() == nil {
				log.WarnContext(ctx, "renew lease", "err", err)
			}
		case cur.CancelRequested:
			cancel(errCancelled)
		}
	}
}

// execute builds and pushes. The result holds what was learnt even when
// the build failed part-way. A succeeded BuildKit build with an automatic
// warm start returns its cache export, to run after the result.
func (a *Agent) execute(ctx context.Context, b *kilnv1.Build, ev *events) (_ *kilnv1.BuildResult, warm *warmExport, _ error) {
	if isIndexBuild(b) { // a multi-platform build's index: no step to run
		result, err := a.writeIndex(ctx, b, ev)
		return result, nil, err
	}
	result := &kilnv1.BuildResult{}
	spec := b.Spec
	if len(a.builders()) == 0 { // the engine has not answered since the agent started
		a.checkEngine(ctx)
	}
	builder, err := a.chooseBuilder(spec, b.Context)
	if err != nil {
		return result, nil, &engine.BuildError{Message: err.Error()}
	}
	result.Builder = builder
	if err := a.checkAttest(spec); err != nil {
		return result, nil, &engine.BuildError{Message: err.Error()}
	}
	creds, err := a.openRegistryAuth(b)
	if err != nil {
		return result, nil, &engine.BuildError{Message: err.Error()}
	}
	rep := &reporter{
		ev: ev, steps: newStepSpans(ctx, b), mask: newMasker(maskedValues(nil, creds)),
		agent: a.cfg.Name, buildID: b.Id, clips: &a.clips,
	}
	defer func() { rep.steps.end(context.Cause(ctx)) }()
	var (
		res     engine.Result
		inBuild bool // the engine pushes as part of the build
	)
	if builder == kilnv1.Builder_BUILDER_BUILDKIT {
		inBuild = spec.Push && slices.Contains(a.engineInfo().Features, engine.FeaturePushInBuild)
		var bk engine.BuildKitResult
		bk, warm, err = a.buildKit(ctx, b, creds, ev, rep, inBuild, result)
		res, result.ContextTransferBytes = bk.Result, bk.ContextBytes
		for _, p := range bk.Pushed {
			pi := &kilnv1.PushedImage{Tag: p.Tag, Digest: p.Digest, Size: p.Size}
			result.Pushed = append(result.Pushed, pi)
			ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Pushed{Pushed: pi}})
		}
	} else {
		res, result.ContextTransferBytes, err = a.buildClassic(ctx, b, creds, ev, rep)
	}
	err = rep.mask.err(err) // either builder's errors may quote a secret or a registry password
	result.ImageId = res.ImageID
	result.Steps = uint32(res.Steps)
	result.CachedSteps = uint32(res.CachedSteps)
	if err != nil {
		return result, nil, err
	}
	if !spec.Push || inBuild {
		return result, warm, nil
	}
	for _, tag := range spec.Tags {
		// Fence the push: renew the lease first, so an attempt that lost
		// its build (agent frozen past its lease) cannot overwrite the tag
		// the attempt that replaced it pushed.
		if _, err := ev.at.Renew(ctx, a.cfg.Lease); err != nil {
			warm.drop()
			return result, nil, fmt.Errorf("push %s: %w", tag, err)
		}
		pctx, pspan := startSpan(ctx, "push "+tag, b, telemetry.TagKey.String(tag))
		digest, size, err := a.pushImage(pctx, res.ImageID, tag, creds, func(line string) { ev.log(0, rep.mask.log(-1, line)) })
		endSpan(pspan, err)
		if err != nil {
			warm.drop()
			return result, nil, rep.mask.err(fmt.Errorf("push %s: %w", tag, err))
		}
		p := &kilnv1.PushedImage{Tag: tag, Digest: digest, Size: size}
		result.Pushed = append(result.Pushed, p)
		ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Pushed{Pushed: p}})
	}
	a.describePushed(ctx, result, creds, ev)
	return result, warm, nil
}

// buildClassic builds with the classic builder from a context tar, and
// returns how many bytes of tar the engine read.
func (a *Agent) buildClassic(ctx context.Context, b *kilnv1.Build, creds engine.Credentials, ev *events, rep *reporter) (engine.Result, int64, error) {
	if err := a.checkClassicPolicy(ctx, b); err != nil {
		return engine.Result{}, 0, err
	}
	fctx, fetch := startSpan(ctx, "context fetch", b)
	contextTar, closeContext, err := a.openContext(fctx, b.Context, ev)
	endSpan(fetch, err)
	if err != nil {
		return engine.Result{}, 0, err
	}
	opts := buildOptions(b.Spec, creds)
	if df := b.GetSpec().GetDockerfileInline(); len(df) > 0 {
		// Sent apart from the context: it goes into the tar, as the
		// docker CLI sends a Dockerfile from outside the context.
		name, err := inlineDockerfileName()
		if err != nil {
			return engine.Result{}, 0, errors.Join(err, closeContext())
		}
		inner := closeContext
		var closeCopy func() error
		contextTar, closeCopy = addInlineDockerfile(contextTar, df, name)
		closeContext = func() error {
			err := closeCopy()
			if ierr := inner(); ierr != nil {
				return ierr // the context's own failure says more than the copy's
			}
			return err
		}
		opts.Dockerfile = name
	}
	counted := &countingReader{r: contextTar}
	res, err := a.cfg.Engine.Build(ctx, counted, opts, rep)
	// A context that could not be written in full says more than the
	// engine's broken request.
	if cerr := closeContext(); cerr != nil && err != nil {
		err = fmt.Errorf("write build context: %w", cerr)
	}
	return res, counted.n, classicHint(err, a.builders())
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// finish records how the build ended, fenced on its attempt, and then
// publishes the finished event. A drained build is handed back instead.
// It reports whether the build was recorded SUCCEEDED.
func (a *Agent) finish(work context.Context, b *kilnv1.Build, result *kilnv1.BuildResult, buildErr, cause error, ev *events, log *slog.Logger) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(work), finishTimeout)
	defer cancel()
	if errors.Is(cause, errLost) || errors.Is(buildErr, buildstore.ErrFenced) {
		ev.at.Abandon()
		log.WarnContext(ctx, "build abandoned: another attempt owns it")
		return false
	}
	if errors.Is(cause, errDrained) {
		a.handBack(ctx, ev, log, fmt.Sprintf("agent %q stopped before the build finished; re-queued", a.cfg.Name))
		return false
	}
	if cause == nil && isFarm(buildErr) {
		log.WarnContext(ctx, "the farm did not answer while preparing the build; handing it back", "err", buildErr)
		a.handBack(ctx, ev, log, fmt.Sprintf("agent %q could not reach the farm (%v); re-queued", a.cfg.Name, buildErr))
		return false
	}
	state, msg := kilnv1.BuildState_BUILD_STATE_SUCCEEDED, ""
	switch {
	case buildErr == nil:
	case errors.Is(cause, errCancelled):
		state, msg = kilnv1.BuildState_BUILD_STATE_CANCELLED, "cancelled while running"
	default:
		state, msg = kilnv1.BuildState_BUILD_STATE_FAILED, buildErr.Error()
	}
	if state != kilnv1.BuildState_BUILD_STATE_CANCELLED {
		// The engine now holds this build's layers (up to a failed step):
		// advertise them before the client hears of the end (the
		// scheduler publishes the finished event when it records the
		// result), so the lineage's next build comes here.
		a.summary.Add(b.Affinity)
		a.heartbeat(ctx)
	}
	if _, err := ev.at.Finish(ctx, state, result, msg); err != nil {
		log.WarnContext(ctx, "result refused", "state", state.String(), "err", err)
		return false
	}
	log.InfoContext(ctx, "build finished", "state", state.String(), "steps", result.Steps, "cached", result.CachedSteps)
	return state == kilnv1.BuildState_BUILD_STATE_SUCCEEDED
}

// handBack returns a build the agent could not finish to the queue: the
// scheduler re-queues it and says why in its log.
func (a *Agent) handBack(ctx context.Context, ev *events, log *slog.Logger, why string) {
	if err := ev.at.HandBack(ctx, why); err != nil {
		log.WarnContext(ctx, "hand back build", "err", err)
		return
	}
	log.InfoContext(ctx, "build handed back")
}

// events queues one attempt's events of a build for the scheduler.
type events struct {
	at     *agentproto.Attempt
	logger *slog.Logger
}

func (e *events) publish(ev *kilnv1.BuildEvent) {
	ev.Time = timestamppb.Now()
	e.at.Event(ev)
}

func (e *events) log(step int, line string) {
	e.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: uint32(step), Text: line}}})
}

// internal logs one of the agent's bookkeeping lines (the context files it
// fetched, the work directory it wrote): for whoever runs the farm, not
// for the build's author. It is a line of no step that begins "kiln: ",
// which kiln build shows only with --debug (sdk/internal/progress's
// Internal holds the rule).
func (e *events) internal(format string, args ...any) {
	e.log(0, "kiln: "+fmt.Sprintf(format, args...))
}

// reporter turns the engine's progress into build events. The engine
// calls it from one goroutine.
type reporter struct {
	ev    *events
	mask  *masker    // hides the build's secrets in what it prints
	steps *stepSpans // the steps' spans

	agent, buildID string
	clips          *engineClips    // the agent's, for its heartbeat
	clipSaid       map[string]bool // the engine settings this build's log has named
}

var _ engine.Reporter = (*reporter)(nil)

func (r *reporter) Log(step int, line string) { r.ev.log(step, r.mask.log(step, line)) }

func (r *reporter) StepStarted(step, total int, instruction string) {
	r.steps.started(step, r.mask.line(instruction))
	r.ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_StepStarted{StepStarted: &kilnv1.StepStarted{
		Step: uint32(step), Total: uint32(total), Instruction: r.mask.line(instruction),
	}}})
}

// Clipped notes the engine's clipping for the agent's heartbeat and says
// so in the build's log, once per engine setting.
func (r *reporter) Clipped(step int, limit string) {
	r.clips.note(r.buildID, limit, time.Now())
	setting := engine.ClipSetting(limit)
	if r.clipSaid[setting] {
		return
	}
	if r.clipSaid == nil {
		r.clipSaid = map[string]bool{}
	}
	r.clipSaid[setting] = true
	r.ev.logger.Warn("the engine clipped a step's output at BuildKit's step log limit; set the engine's "+setting+" to keep full logs",
		"step", step, "limit", limit, "setting", setting)
	r.ev.log(step, clipLine(r.agent, limit))
}

func (r *reporter) StepFinished(step int, instruction string, cached bool, took time.Duration) {
	r.steps.finished(step, r.mask.line(instruction), cached, took)
	observeStep(cached, took)
	r.ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_StepFinished{StepFinished: &kilnv1.StepFinished{
		Step: uint32(step), Instruction: r.mask.line(instruction), Cached: cached, Duration: durationpb.New(took),
	}}})
}
