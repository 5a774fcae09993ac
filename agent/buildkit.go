package agent

import (
	"context"
	"fmt"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
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
	dir, err := a.contextDir(ctx, b, ev)
	if err != nil {
		return engine.BuildKitResult{}, nil, err
	}
	named, releaseNamed, err := a.namedContexts(ctx, b, ev)
	if err != nil {
		dir.Release()
		return engine.BuildKitResult{}, nil, err
	}
	release := func() { dir.Release(); releaseNamed() }
	defer func() {
		if warm == nil {
			release()
		}
	}()

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
		// --build-context (agent/buildctx.go).
		NamedContexts: named,
	}
	if err := a.attestOptions(&o, b); err != nil {
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
	return res, &warmExport{to: plan.warm, o: o, res: res.Result, mask: rep.mask, release: release}, nil
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
