package agent

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/services/agentproto"
)

// exportTimeout bounds one automatic cache export.
const exportTimeout = 10 * time.Minute

// probeTimeout bounds the look at the registry before a warm start's
// import.
const probeTimeout = 10 * time.Second

// cachePlan is what a BuildKit build imports and exports: the build's own
// --cache-from/--cache-to, plus the automatic warm start's ref when its
// tenant has a cache registry (TenantPolicy.cache_registry).
type cachePlan struct {
	from, to []engine.CacheOption
	// imported are the refs the engine is given to import from.
	imported []string
	// warm is the automatic warm start's export after the build's result;
	// its Type "" when there is none.
	warm engine.CacheOption
	// asked counts the entries of to that the build asked for (--cache-to);
	// the rest are the warm start's.
	asked int
}

// announceImports says in the build's log which of its own --cache-from
// refs the engine is given (the warm start's import says so itself).
func (p cachePlan) announceImports(ev *events, spec *kilnv1.BuildSpec) {
	for _, o := range spec.GetCacheFrom() {
		ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
			Kind: kilnv1.CacheEvent_KIND_IMPORT, Ref: o.GetAttrs()["ref"], Type: o.GetType(),
		}}})
	}
}

// announceExports says in the log of a build that succeeded which of its
// --cache-to exports the engine made as part of it.
func (p cachePlan) announceExports(ev *events) {
	for _, o := range p.to[:p.asked] {
		mode := ""
		if o.Type == cacheopt.TypeRegistry {
			mode = o.Attrs["mode"]
			if mode == "" {
				mode = cacheopt.ModeMin
			}
		}
		ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
			Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: o.Attrs["ref"], Type: o.Type, Mode: mode,
		}}})
	}
}

// planCache reads build b's cache options and adds the automatic warm
// start: when the agent's engine holds nothing of b's lineage, the
// lineage's ref in the cache registry is imported (a missing or failing
// ref is a warning event, never a failure); a Docker engine also builds
// with inline cache, which its export pushes. info is the engine's.
func (a *Agent) planCache(ctx context.Context, b *kilnv1.Build, info engine.Info, creds engine.Credentials, ev *events) cachePlan {
	var p cachePlan
	for _, o := range b.GetSpec().GetCacheFrom() {
		p.from = append(p.from, engine.CacheOption{Type: o.GetType(), Attrs: o.GetAttrs()})
		if ref := o.GetAttrs()["ref"]; ref != "" {
			p.imported = append(p.imported, ref)
		}
	}
	for _, o := range b.GetSpec().GetCacheTo() {
		p.to = append(p.to, engine.CacheOption{Type: o.GetType(), Attrs: o.GetAttrs()})
	}
	p.asked = len(p.to)
	prefix, lineage := b.GetPolicy().GetCacheRegistry(), b.GetAffinity().GetLineage()
	if prefix == "" || lineage == "" {
		return p
	}
	ref := cacheopt.WarmRef(prefix, b.GetTenant(), lineage)
	if slices.Contains(info.Features, engine.FeatureCacheExportRegistry) {
		mode := a.cfg.WarmCacheMode
		if mode == "" {
			mode = cacheopt.ModeMax
		}
		p.warm = engine.CacheOption{Type: cacheopt.TypeRegistry, Attrs: map[string]string{"ref": ref, "mode": mode}}
	} else {
		p.warm = engine.CacheOption{Type: cacheopt.TypeInline, Attrs: map[string]string{"ref": ref}}
		if !slices.ContainsFunc(p.to, func(o engine.CacheOption) bool { return o.Type == cacheopt.TypeInline }) {
			p.to = append(p.to, engine.CacheOption{Type: cacheopt.TypeInline})
		}
	}
	if a.summary.HasLineage(lineage) || slices.Contains(p.imported, ref) || b.GetSpec().GetNoCache() {
		return p // the engine holds the lineage (its own cache is warmer), or the build uses no cache
	}
	// The engine imports as it builds and does not say how long that
	// took: the event has no duration.
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	err := engine.ProbeCacheRef(pctx, ref, creds)
	cancel()
	ce := &kilnv1.CacheEvent{Kind: kilnv1.CacheEvent_KIND_IMPORT, Ref: ref, Type: cacheopt.TypeRegistry, Automatic: true}
	if err != nil {
		// Nothing to import: the lineage's first build, or a registry
		// that does not answer. The build goes on cold.
		ce.Error = err.Error()
		ev.logger.WarnContext(ctx, "automatic warm start: no cache to import", "ref", ref, "err", err)
	} else {
		p.from = append(p.from, engine.CacheOption{Type: cacheopt.TypeRegistry, Attrs: map[string]string{"ref": ref}})
		p.imported = append(p.imported, ref)
	}
	ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Cache{Cache: ce}})
	return p
}

// warmExport is a succeeded build's automatic cache export, to run after
// its result is recorded.
type warmExport struct {
	to   engine.CacheOption
	o    engine.BuildKitOptions // the build's options, as the engine got them
	res  engine.Result
	mask *masker
	// release releases the build's work directory, held for the export.
	release func()
}

// drop releases what x holds when it is not run.
func (x *warmExport) drop() {
	if x != nil {
		x.release()
	}
}

// exports runs the automatic cache exports, at most one per lineage at a
// time; Run waits for them.
type exports struct {
	mu      sync.Mutex
	running map[string]bool // lineages being exported
	wg      sync.WaitGroup
}

// start exports x's cache in a goroutine the agent owns, bounded by
// exportTimeout and ended with work (the agent's work context), unless
// the lineage's previous export still runs. The export is its own span
// and a CacheEvent EXPORT appended after the build's finished event; a
// failure is a warning there, never the build's.
func (a *Agent) startExport(work context.Context, b *kilnv1.Build, at *agentproto.Attempt, x *warmExport, log *slog.Logger) {
	lineage := b.GetAffinity().GetLineage()
	e := &a.exports
	e.mu.Lock()
	if e.running[lineage] {
		e.mu.Unlock()
		x.drop()
		log.InfoContext(work, "automatic cache export skipped: the lineage's previous export still runs", "ref", x.to.Attrs["ref"])
		return
	}
	if e.running == nil {
		e.running = map[string]bool{}
	}
	e.running[lineage] = true
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer x.release()
		defer func() {
			e.mu.Lock()
			delete(e.running, lineage)
			e.mu.Unlock()
		}()
		a.export(work, b, at, x, log)
	}()
}

// export runs one automatic cache export and reports it.
func (a *Agent) export(work context.Context, b *kilnv1.Build, at *agentproto.Attempt, x *warmExport, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(work, exportTimeout)
	defer cancel()
	ref, mode := x.to.Attrs["ref"], x.to.Attrs["mode"]
	ctx, span := startSpan(ctx, "cache export", b, attribute.String("kiln.cache.ref", ref), attribute.String("kiln.cache.type", x.to.Type))
	started := time.Now()
	err := x.mask.err(a.cfg.Engine.ExportCache(ctx, x.o, x.res, x.to, logReporter{log: log, mask: x.mask}))
	took := time.Since(started)
	endSpan(span, err)
	observeCacheExport(err, took)
	ce := &kilnv1.CacheEvent{
		Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: ref, Type: x.to.Type, Mode: mode, Automatic: true,
		Duration: durationpb.New(took),
	}
	if err != nil {
		ce.Error = err.Error()
		log.WarnContext(ctx, "automatic cache export failed", "ref", ref, "err", err)
	} else {
		log.InfoContext(ctx, "automatic cache export done", "ref", ref, "type", x.to.Type, "took", took.Round(time.Millisecond))
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(work), finishTimeout)
	defer rcancel()
	if err := at.AfterFinish(rctx, &kilnv1.BuildEvent{Time: timestamppb.Now(), Event: &kilnv1.BuildEvent_Cache{Cache: ce}}); err != nil {
		log.WarnContext(rctx, "report the automatic cache export", "ref", ref, "err", err)
	}
}

// logReporter takes an engine's progress where no build's log can: the
// automatic cache export runs after the build's finished event. Lines go
// to the agent's debug log, masked as the build's.
type logReporter struct {
	log  *slog.Logger
	mask *masker
}

func (r logReporter) Log(step int, line string) {
	r.log.Debug("cache export", "line", r.mask.log(step, line))
}

func (logReporter) StepStarted(int, int, string)                  {}
func (logReporter) StepFinished(int, string, bool, time.Duration) {}
func (logReporter) Clipped(int, string)                           {}
