package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/localcas"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// buildKit runs a build in BuildKit mode: the context is materialized
// from the local CAS into the lineage's directory, which the engine syncs
// from; only what changed since this agent last built the lineage crosses.
//
// Its cache options are the build's --cache-from/--cache-to plus the
// automatic warm start's (planCache); result gets the refs imported. push
// has an engine with FeaturePushInBuild push the tags as part of the
// build, fenced like Push: the lease is renewed right before. A succeeded
// build with a warm start returns its export, for after its result.
// The work directory stays held for the export (the engine may read the
// context again), and is released when the export ends.
func (a *Agent) buildKit(ctx context.Context, b *kilnv1.Build, creds engine.Credentials, ev *events, rep *reporter, push bool, result *kilnv1.BuildResult) (_ engine.BuildKitResult, warm *warmExport, _ error) {
	ref := b.GetContext()
	if ref.GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST || ref.GetDigest() == nil {
		return engine.BuildKitResult{}, nil, errors.New("BuildKit builds need a manifest context (kiln CLI 0.2 or later); this build's context is a tar: run it with --builder classic")
	}
	m, err := a.readManifest(ctx, ref.Digest)
	if err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	total, err := ctxmanifest.Validate(m, a.cfg.ContextLimits)
	if err != nil {
		return engine.BuildKitResult{}, nil, fmt.Errorf("context manifest %s is refused: %s", ref.Digest.Hash, status.Convert(err).Message())
	}
	var files []localcas.Blob
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			files = append(files, localcas.Blob{Digest: e.Digest.Hash, Size: e.Size})
		}
	}
	fctx, fetch := startSpan(ctx, "context fetch", b, attribute.Int("kiln.context.files", len(files)))
	pin, st, err := a.cache.Ensure(fctx, files, a.blobs.Get)
	fetch.SetAttributes(attribute.Int("kiln.context.fetched_blobs", st.Fetched), attribute.Int64("kiln.context.fetched_bytes", st.FetchedBytes))
	endSpan(fetch, err)
	if err != nil {
		return engine.BuildKitResult{}, nil, fmt.Errorf("fetch build context files: %w", farm(err))
	}
	observeContextFetch(st)
	key := b.GetAffinity().GetLineage()
	if key == "" {
		key = "kiln:no-lineage" // builds without one share directories, reused slot by slot
	}
	started := time.Now()
	mctx, materialize := startSpan(ctx, "context materialize", b)
	dir, ws, err := a.workdirs.Materialize(mctx, key, m, a.cache)
	endSpan(materialize, err)
	pin.Release()
	if err != nil {
		return engine.BuildKitResult{}, nil, fmt.Errorf("write the build context to the agent's work directory: %w", err)
	}
	defer func() {
		if warm == nil {
			dir.Release()
		}
	}()
	ev.internal("context: %d files, %s; fetched %d blobs (%s) from the farm, %d already on this agent; work dir %s: %d entries written (%s), %d removed, %d kept in %s",
		len(files), megabytes(total), st.Fetched, megabytes(st.FetchedBytes), st.Local,
		dir.Slot(), ws.Written, megabytes(ws.WrittenBytes), ws.Removed, ws.Kept, time.Since(started).Round(time.Millisecond))
	ev.logger.InfoContext(ctx, "build context ready", "manifest", ref.Digest.Hash, "files", len(files), "bytes", total,
		"fetched_blobs", st.Fetched, "fetched_bytes", st.FetchedBytes, "workdir", dir.Slot(),
		"written", ws.Written, "written_bytes", ws.WrittenBytes, "removed", ws.Removed, "kept", ws.Kept)

	spec := b.Spec
	dockerfile, err := a.checkPolicy(ctx, dir.Path(), b)
	if err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	secrets, err := a.openSecrets(b)
	if err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	rep.mask = newMasker(maskedValues(secrets, creds))
	plan := a.planCache(ctx, b, a.engineInfo(), creds, ev)
	plan.announceImports(ev, spec)
	result.CacheImportedFrom = plan.imported
	o := engine.BuildKitOptions{
		BuildOptions:   buildOptions(spec, creds),
		ContextDir:     dir.Path(),
		SharedKey:      "kiln-" + a.cfg.Name + "-" + dir.Slot(),
		Secrets:        secrets,
		DockerfileData: dockerfile,
		CacheFrom:      plan.from,
		CacheTo:        plan.to,
		Push:           push,
	}
	if err := a.attestOptions(&o, spec); err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	if err := a.sshOptions(&o, b, creds, rep); err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	if push {
		// Fence the push as execute fences Push: an attempt that lost its
		// build must not overwrite the tags of the one that replaced it.
		if _, err := ev.at.Renew(ctx, a.cfg.Lease); err != nil {
			return engine.BuildKitResult{}, nil, fmt.Errorf("push: %w", err)
		}
	}
	res, err := a.cfg.Engine.BuildKit(ctx, o, rep)
	attestResult(result, res)
	if err == nil && o.Call == "" {
		result.Output, err = a.exportOutput(ctx, spec, o, res.Result, ev, rep)
	}
	if err == nil {
		plan.announceExports(ev)
	}
	if err != nil || plan.warm.Type == "" || o.Call != "" {
		return res, nil, err // execute masks err
	}
	return res, &warmExport{to: plan.warm, o: o, res: res.Result, mask: rep.mask, release: dir.Release}, nil
}

func buildOptions(spec *kilnv1.BuildSpec, creds engine.Credentials) engine.BuildOptions {
	return engine.BuildOptions{
		Auth:       creds,
		Dockerfile: spec.Dockerfile,
		Tags:       spec.Tags,
		BuildArgs:  spec.BuildArgs,
		Target:     spec.Target,
		Labels:     spec.Labels,
		NoCache:    spec.NoCache,
		Pull:       spec.Pull,
		Network:    spec.Network,
		ExtraHosts: spec.ExtraHosts,
		ShmSize:    spec.ShmSizeBytes,
		Ulimits:    ulimits(spec.Ulimits),
		Platform:   specPlatform(spec),
	}
}

// specPlatform is the platform a build is for: its one platform ("" when
// it names none: the engine's own). A build naming several is a parent
// the farm splits into one child per platform and never reaches an agent.
func specPlatform(spec *kilnv1.BuildSpec) string {
	if len(spec.GetPlatforms()) == 1 {
		return spec.GetPlatforms()[0]
	}
	return ""
}

// ulimits are the spec's --ulimit values as the engine takes them.
func ulimits(in []*kilnv1.Ulimit) []engine.Ulimit {
	var out []engine.Ulimit
	for _, u := range in {
		out = append(out, engine.Ulimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	return out
}
