// Package agent runs builds on one Docker engine. Each slot pulls work from
// the scheduler (kiln.sched.pull.<name> long-poll), has the build marked
// RUNNING, keeps its lease alive, builds through the engine while streaming
// every line and step as events, pushes the tags and has the result
// recorded. The agent writes none of it itself: each is a report to the
// schedulers (package agentproto), which check that the build is this
// agent's at this attempt before they write the record or its log, so an
// agent that lost its build — or one posing as another — cannot overwrite
// the record of the attempt that replaced it.
//
// A context sent as a tar blob goes to the engine as it is. A context sent
// as a manifest is checked again, its file blobs are made local (package
// localcas: only the blobs this agent lacks are fetched from KILN_CAS), and
// the engine reads a tar generated from both (package contexttar):
//
//	manifest blob ──► Validate ──► localcas.Ensure(file blobs) ──► contexttar.Write ──► io.Pipe ──► Engine.Build
//
// Stopping the agent drains it: no new pulls, in-flight builds get
// DrainTimeout to finish and are otherwise handed back to the queue.
//
// An admin's drain request (the gateway's DrainAgent, on
// kiln.agent.drain.<name>) holds the agent instead: no new pulls, waiting
// pulls withdrawn, heartbeat DRAINING, running builds go on; the process
// stays up and resumes pulling when undrained.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/agent/workdir"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
	"github.com/kilnbuild/kiln/services/sealed"
)

// Engine is what the agent needs from a Docker engine.
type Engine interface {
	Info(ctx context.Context) (engine.Info, error)
	Build(ctx context.Context, contextTar io.Reader, o engine.BuildOptions, r engine.Reporter) (engine.Result, error)
	BuildKit(ctx context.Context, o engine.BuildKitOptions, r engine.Reporter) (engine.BuildKitResult, error)
	Push(ctx context.Context, tag string, creds engine.Credentials, log func(line string)) (digest string, size int64, err error)
	// ExportCache exports the cache of the BuildKit build o, which has
	// just succeeded on this engine with result res, to `to`: the
	// automatic warm start's export, run after the build's result is
	// recorded. It must not change the pushed image.
	ExportCache(ctx context.Context, o engine.BuildKitOptions, res engine.Result, to engine.CacheOption, r engine.Reporter) error
	// ExportOutput exports the result of the BuildKit build o, which has
	// just succeeded on this engine as res, as o.Output into o.OutputDir
	// (--output local, tar, oci or docker).
	ExportOutput(ctx context.Context, o engine.BuildKitOptions, res engine.Result, r engine.Reporter) error
}

var _ Engine = (*engine.Docker)(nil)

// Config wires an Agent.
type Config struct {
	Name   string
	Slots  int
	Labels map[string]string
	Engine Engine
	Conn   *bus.Conn
	Logger *slog.Logger
	// Lease must match the scheduler's; the agent renews at a third of it.
	Lease time.Duration
	// DrainTimeout is how long in-flight builds may run after Run's ctx ends
	// before they are handed back to the queue.
	DrainTimeout time.Duration
	// PollWait is how long one pull may wait for work.
	PollWait time.Duration
	// HeartbeatEvery is how often the agent refreshes its KV heartbeat and
	// pings its engine.
	HeartbeatEvery time.Duration
	// CacheDir holds the agent's local copy of context blobs (package
	// localcas); "" means <user cache dir>/kiln-cas/<Name>. Only one process
	// may use a directory at a time.
	CacheDir string
	// CacheBytes bounds the local blob cache; 0 means localcas.DefaultMaxBytes.
	CacheBytes int64
	// ContextLimits bound a manifest context, checked again before it is
	// built; zero means ctxmanifest.DefaultLimits. Set them as the gateway's.
	ContextLimits ctxmanifest.Limits
	// Builder narrows the builders the agent offers: BuilderAuto (or "")
	// offers what the engine has, BuildKit first; BuilderClassic or
	// BuilderBuildKit only that one.
	Builder string
	// WorkDir holds the per-lineage context directories BuildKit builds
	// sync from (package workdir); "" means <CacheDir>-work. Only one
	// process may use a directory at a time.
	WorkDir string
	// WorkDirBytes bounds the work directories; 0 means workdir.DefaultMaxBytes.
	WorkDirBytes int64
	// SecretsKey opens builds' sealed secrets; nil refuses builds with secrets.
	SecretsKey *sealed.PrivateKey
	// FrontendAllow lists the Dockerfile frontend images ("# syntax=",
	// BUILDKIT_SYNTAX) the engine may pull, as path.Match patterns; none
	// by default: the engine's built-in frontend is used.
	FrontendAllow []string
	// SkipRuncProbe skips the CVE-2024-21626 probe of the engine's runc
	// (see checkRunc). Only for an engine whose default runtime is not
	// runc (gVisor's runsc, Kata), which the probe cannot read and which
	// that CVE does not concern.
	SkipRuncProbe bool
	// WarmCacheMode is the automatic warm start's registry export mode on
	// engines that export registry caches: "max" (the default: every
	// stage's layers, so a multi-stage build's builder stages are warm
	// too) or "min" (the final image's layers only, a smaller export).
	WarmCacheMode string
}

// Defaults for zero Config fields.
const (
	DefaultSlots          = 2
	DefaultLease          = 30 * time.Second
	DefaultDrainTimeout   = 5 * time.Minute
	DefaultPollWait       = 10 * time.Second
	DefaultHeartbeatEvery = 5 * time.Second
)

// Agent runs builds from the farm's queue on one engine.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	client *agentproto.Client // every write about its builds goes through the scheduler
	blobs  *cas.Store         // the farm's CAS
	cache  *localcas.Store    // this agent's copy of the blobs it built from
	// workdirs holds the per-lineage context directories of BuildKit builds.
	workdirs *workdir.Store
	started  time.Time

	summary CacheSummary
	healthy atomic.Bool
	// clips is what the agent saw of its engine clipping builds' output.
	clips engineClips
	// exports are the automatic warm start's cache exports running.
	exports exports
	// pushing serialises the re-tag and push of one tag (push_tag.go).
	pushing tagLocks
	// worker pulls for the slots, heartbeats, holds for an admin's drain
	// and drains on stop (agentproto.Worker).
	worker *agentproto.Worker

	mu   sync.Mutex
	info engine.Info
	runc runcState
}

// New binds an Agent to the farm and opens its local blob cache; Close
// closes the cache. The agent sets nothing up (its credential may not): it
// waits until ctx ends for a gateway or scheduler to have run bus.Setup.
// cfg.Conn should use the agent's inbox prefix (bus.AgentInboxPrefix), as
// its credential allows replies there only.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	client, err := agentproto.New(cfg.Conn.NC, cfg.Name)
	if err != nil {
		return nil, err
	}
	var (
		blobs  *cas.Store
		agents jetstream.KeyValue
	)
	if err := bus.WaitForSetup(ctx, func(ctx context.Context) (err error) {
		if blobs, err = cas.Open(ctx, cfg.Conn.JS); err != nil {
			return err
		}
		if agents, err = cfg.Conn.JS.KeyValue(ctx, bus.BucketAgents); err != nil {
			return fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if cfg.Slots <= 0 {
		cfg.Slots = DefaultSlots
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.PollWait == 0 {
		cfg.PollWait = DefaultPollWait
	}
	if cfg.HeartbeatEvery == 0 {
		cfg.HeartbeatEvery = DefaultHeartbeatEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ContextLimits == (ctxmanifest.Limits{}) {
		cfg.ContextLimits = ctxmanifest.DefaultLimits
	}
	if cfg.CacheDir == "" {
		if cfg.CacheDir, err = defaultCacheDir(cfg.Name); err != nil {
			return nil, err
		}
	}
	log := cfg.Logger.With("agent", cfg.Name)
	cache, err := localcas.Open(localcas.Config{Dir: cfg.CacheDir, MaxBytes: cfg.CacheBytes, Logger: log})
	if err != nil {
		return nil, err
	}
	n, size := cache.Usage()
	log.Info("local blob cache open", "dir", cfg.CacheDir, "blobs", n, "bytes", size)
	switch cfg.Builder {
	case "", BuilderAuto, BuilderBuildKit, BuilderClassic:
	default:
		cache.Close()
		return nil, fmt.Errorf("builder %q: want auto, buildkit or classic", cfg.Builder)
	}
	switch cfg.WarmCacheMode {
	case "", cacheopt.ModeMin, cacheopt.ModeMax:
	default:
		cache.Close()
		return nil, fmt.Errorf("warm cache mode %q: want min or max", cfg.WarmCacheMode)
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = filepath.Clean(cfg.CacheDir) + "-work"
	}
	workdirs, err := workdir.Open(workdir.Config{Dir: cfg.WorkDir, MaxBytes: cfg.WorkDirBytes, Logger: log})
	if err != nil {
		cache.Close()
		return nil, err
	}
	removeStaleOutputs(cfg.WorkDir, log)
	a := &Agent{
		cfg: cfg, log: log, client: client, blobs: blobs, cache: cache, workdirs: workdirs,
		started: time.Now(),
	}
	a.worker = &agentproto.Worker{
		Client: client, Agents: agents, Slots: cfg.Slots, PollWait: cfg.PollWait,
		HeartbeatEvery: cfg.HeartbeatEvery, DrainTimeout: cfg.DrainTimeout,
		Build: func(work context.Context, b *kilnv1.Build) {
			slotsBusy.Inc()
			defer slotsBusy.Dec()
			a.runBuild(work, b)
		},
		Record: a.record, Healthy: a.healthy.Load, Tick: a.checkEngine, Logger: log,
	}
	return a, nil
}

// Close closes the agent's local blob cache and work directories, for
// another process to open; call it after Run has returned.
func (a *Agent) Close() error { return errors.Join(a.workdirs.Close(), a.cache.Close()) }

// Ready reports whether the agent's engine answers, for /readyz.
func (a *Agent) Ready(context.Context) error {
	if why := a.runcRefusal(); why != "" {
		return fmt.Errorf("agent %q is out of rotation: %s", a.cfg.Name, why)
	}
	if !a.healthy.Load() {
		return fmt.Errorf("engine of agent %q does not answer", a.cfg.Name)
	}
	return nil
}

// Announce checks the engine and writes the agent's first heartbeat, so a
// caller can report the agent as serving only once the farm can see it.
func (a *Agent) Announce(ctx context.Context) {
	a.checkEngine(ctx)
	a.heartbeat(ctx)
}

// Run pulls and runs builds until ctx ends, then drains.
func (a *Agent) Run(ctx context.Context) error {
	slotsTotal.Set(float64(a.cfg.Slots))
	defer slotsTotal.Set(0)
	// Listen for an admin's drain before the heartbeat shows the agent.
	drainSub, err := a.cfg.Conn.NC.Subscribe(bus.DrainSubject(a.cfg.Name), func(m *nats.Msg) { a.onDrainRequest(ctx, m) })
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.DrainSubject(a.cfg.Name), err)
	}
	defer func() { _ = drainSub.Unsubscribe() }()
	a.Announce(ctx)
	a.worker.Run(ctx)
	a.exports.wg.Wait() // they end with the work context, as builds do
	a.log.Info("agent stopped")
	return nil
}

// checkEngine pings the engine and records whether it answers.
func (a *Agent) checkEngine(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := a.cfg.Engine.Info(pctx)
	if err == nil && a.checkRunc(ctx, info) != nil {
		a.healthy.Store(false) // out of rotation; checkRunc said why
		return
	}
	was := a.healthy.Swap(err == nil)
	if err != nil {
		if was || a.info.ServerVersion == "" {
			a.log.Error("engine does not answer; out of rotation", "err", err)
		}
		return
	}
	a.mu.Lock()
	a.info = info
	a.mu.Unlock()
	if !was {
		a.clips.reset() // a new engine process: its limits may be lifted
		a.log.Info("engine answers", "kind", info.Kind, "features", info.Features, "version", info.ServerVersion, "api", info.APIVersion, "storage_driver", info.StorageDriver)
	}
}

// engineInfo is what the engine last said of itself.
func (a *Agent) engineInfo() engine.Info {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.info
}

// heartbeat writes the agent's record to KV KILN_AGENTS.
func (a *Agent) heartbeat(ctx context.Context) {
	_, _ = a.worker.Heartbeat(ctx)
}

// record is the heartbeat's record as the agent knows it; the worker adds
// the slots' state.
func (a *Agent) record() *kilnv1.Agent {
	a.mu.Lock()
	info := a.info
	a.mu.Unlock()
	state := kilnv1.AgentState_AGENT_STATE_READY
	if !a.healthy.Load() {
		state = kilnv1.AgentState_AGENT_STATE_UNHEALTHY
	}
	return &kilnv1.Agent{
		Version: version.String(),
		State:   state, EngineVersion: info.ServerVersion, EngineApiVersion: info.APIVersion, StorageDriver: info.StorageDriver,
		Os: nonEmpty(info.OS, runtime.GOOS), Arch: nonEmpty(info.Arch, runtime.GOARCH), Labels: a.cfg.Labels,
		StartedAt: timestamppb.New(a.started), Cache: a.summary.Proto(), Builders: a.builders(),
		Warnings: a.clips.warnings(), EngineKind: info.Kind, Features: info.Features,
		Platforms: info.Platforms, EmulatedPlatforms: info.Emulated,
	}
}

func nonEmpty(s, fallback string) string {
	if s != "" {
		return s
	}
	return fallback
}

// DefaultKilndDrainTimeout is kilnd's shorter drain: someone pressing
// Ctrl-C on a workstation should not wait minutes.
const DefaultKilndDrainTimeout = 10 * time.Second
