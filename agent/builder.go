package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/registry"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/agent/policy"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// Builder names as flags and engine.Info spell them.
const (
	BuilderAuto     = "auto"
	BuilderBuildKit = "buildkit"
	BuilderClassic  = "classic"
)

// builders returns what this agent offers, preferred first: what the
// engine offers, narrowed by --builder.
func (a *Agent) builders() []kilnv1.Builder {
	a.mu.Lock()
	offered := a.info.Builders
	if a.runc.refusal != "" { // an engine refused for its runc offers nothing
		offered = nil
	}
	a.mu.Unlock()
	var out []kilnv1.Builder
	for _, b := range offered {
		if a.cfg.Builder != "" && a.cfg.Builder != BuilderAuto && a.cfg.Builder != b {
			continue
		}
		switch b {
		case BuilderBuildKit:
			out = append(out, kilnv1.Builder_BUILDER_BUILDKIT)
		case BuilderClassic:
			out = append(out, kilnv1.Builder_BUILDER_CLASSIC)
		}
	}
	return out
}

// chooseBuilder picks the builder for a build: the one asked for, else
// BuildKit where offered; a build with secrets needs BuildKit. A build
// whose context is a tar (API clients other than the kiln CLI) that asks
// for neither goes to the classic builder, which reads tars.
func (a *Agent) chooseBuilder(spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef) (kilnv1.Builder, error) {
	offered := a.builders()
	if len(offered) == 0 {
		return 0, fmt.Errorf("agent %q knows of no builder its engine offers (the engine has not answered yet)", a.cfg.Name)
	}
	want := spec.GetBuilder()
	if len(spec.GetSecrets()) > 0 {
		if want == kilnv1.Builder_BUILDER_CLASSIC {
			return 0, errors.New("build secrets need the BuildKit builder, and the build asks for the classic one (--builder classic)")
		}
		want = kilnv1.Builder_BUILDER_BUILDKIT
	}
	if want == kilnv1.Builder_BUILDER_UNSPECIFIED && ref.GetFormat() == kilnv1.ContextFormat_CONTEXT_FORMAT_TAR {
		want = kilnv1.Builder_BUILDER_CLASSIC
	}
	switch {
	case want == kilnv1.Builder_BUILDER_UNSPECIFIED:
		return offered[0], nil
	case slices.Contains(offered, want):
		return want, nil
	case want == kilnv1.Builder_BUILDER_BUILDKIT:
		why := "the build asks for BuildKit (--builder buildkit)"
		if len(spec.GetSecrets()) > 0 {
			why = "build secrets need BuildKit"
		}
		return 0, fmt.Errorf("%s, and agent %q offers only the classic builder (its engine has no BuildKit, or the agent runs with --builder classic)", why, a.cfg.Name)
	default:
		return 0, fmt.Errorf("the build asks for the %s builder, which agent %q does not offer", builderName(want), a.cfg.Name)
	}
}

func builderName(b kilnv1.Builder) string {
	switch b {
	case kilnv1.Builder_BUILDER_BUILDKIT:
		return BuilderBuildKit
	case kilnv1.Builder_BUILDER_CLASSIC:
		return BuilderClassic
	}
	return "unspecified"
}

// buildKit runs a build in BuildKit mode: the context is materialized
// from the local CAS into the lineage's directory, which the engine syncs
// from; only what changed since this agent last built the lineage crosses.
func (a *Agent) buildKit(ctx context.Context, b *kilnv1.Build, creds engine.Credentials, ev *events, rep *reporter) (engine.BuildKitResult, error) {
	ref := b.GetContext()
	if ref.GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST || ref.GetDigest() == nil {
		return engine.BuildKitResult{}, errors.New("BuildKit builds need a manifest context (kiln CLI 0.2 or later); this build's context is a tar: run it with --builder classic")
	}
	m, err := a.readManifest(ctx, ref.Digest)
	if err != nil {
		return engine.BuildKitResult{}, err
	}
	total, err := ctxmanifest.Validate(m, a.cfg.ContextLimits)
	if err != nil {
		return engine.BuildKitResult{}, fmt.Errorf("context manifest %s is refused: %s", ref.Digest.Hash, status.Convert(err).Message())
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
		return engine.BuildKitResult{}, fmt.Errorf("fetch build context files: %w", farm(err))
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
		return engine.BuildKitResult{}, fmt.Errorf("write the build context to the agent's work directory: %w", err)
	}
	defer dir.Release()
	ev.internal("context: %d files, %s; fetched %d blobs (%s) from the farm, %d already on this agent; work dir %s: %d entries written (%s), %d removed, %d kept in %s",
		len(files), megabytes(total), st.Fetched, megabytes(st.FetchedBytes), st.Local,
		dir.Slot(), ws.Written, megabytes(ws.WrittenBytes), ws.Removed, ws.Kept, time.Since(started).Round(time.Millisecond))
	ev.logger.InfoContext(ctx, "build context ready", "manifest", ref.Digest.Hash, "files", len(files), "bytes", total,
		"fetched_blobs", st.Fetched, "fetched_bytes", st.FetchedBytes, "workdir", dir.Slot(),
		"written", ws.Written, "written_bytes", ws.WrittenBytes, "removed", ws.Removed, "kept", ws.Kept)

	spec := b.Spec
	dockerfile, err := a.checkPolicy(ctx, dir.Path(), b)
	if err != nil {
		return engine.BuildKitResult{}, err
	}
	secrets, err := a.openSecrets(b)
	if err != nil {
		return engine.BuildKitResult{}, err
	}
	rep.mask = newMasker(maskedValues(secrets, creds))
	res, err := a.cfg.Engine.BuildKit(ctx, engine.BuildKitOptions{
		BuildOptions:   buildOptions(spec, creds),
		ContextDir:     dir.Path(),
		SharedKey:      "kiln-" + a.cfg.Name + "-" + dir.Slot(),
		Secrets:        secrets,
		DockerfileData: dockerfile,
	}, rep)
	return res, err // execute masks it
}

// openSecrets opens build b's sealed secrets with the agent's key.
func (a *Agent) openSecrets(b *kilnv1.Build) (map[string][]byte, error) {
	return a.openSealed(b, b.GetSpec().GetSecrets(), "secret")
}

// openSealed opens sealed values of build b (what names them in errors:
// "secret") with the agent's key, by id, each for the binding it must have
// been sealed with: b's tenant, b's seal nonce and its own id. A value
// copied from another build or tenant, or moved to another id, is refused.
// Errors name the value by id, never by its bytes.
func (a *Agent) openSealed(b *kilnv1.Build, sealed []*kilnv1.SealedSecret, what string) (map[string][]byte, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	if a.cfg.SecretsKey == nil {
		return nil, fmt.Errorf("the build has %ss, and agent %q has no secrets key to open them (--secrets-key-file)", what, a.cfg.Name)
	}
	out := make(map[string][]byte, len(sealed))
	for _, s := range sealed {
		if s.GetKeyId() != a.cfg.SecretsKey.KeyID() {
			return nil, fmt.Errorf("%s %q is sealed to key %s, and agent %q holds key %s: the farm's agents and gateways must share one secrets key", what, s.GetId(), s.GetKeyId(), a.cfg.Name, a.cfg.SecretsKey.KeyID())
		}
		v, err := a.cfg.SecretsKey.Open(seal.Binding{Tenant: b.GetTenant(), Nonce: b.GetSpec().GetSealNonce(), ID: s.GetId()}, s.GetSealed())
		switch {
		case errors.Is(err, seal.ErrWrongBinding):
			return nil, fmt.Errorf("sealed %s %q was %w", what, s.GetId(), err)
		case err != nil:
			return nil, fmt.Errorf("%s %q: %w", what, s.GetId(), err)
		}
		out[s.GetId()] = v
	}
	return out, nil
}

// openRegistryAuth opens build b's registry credentials: by registry host,
// JSON {"username", "password", "identitytoken"} sealed to the farm's key.
func (a *Agent) openRegistryAuth(b *kilnv1.Build) (engine.Credentials, error) {
	opened, err := a.openSealed(b, b.GetSpec().GetRegistryAuth(), "registry credential")
	if err != nil || len(opened) == 0 {
		return nil, err
	}
	creds := make(engine.Credentials, len(opened))
	for host, v := range opened {
		var c struct {
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		}
		if err := json.Unmarshal(v, &c); err != nil { // never quote v: it holds the password
			return nil, fmt.Errorf("registry credential for %s is not the JSON object kiln clients seal", host)
		}
		creds[host] = registry.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, ServerAddress: host}
	}
	return creds, nil
}

// maskedValues is what a build's output must not show: its secrets and
// the passwords and tokens of its registry credentials.
func maskedValues(secrets map[string][]byte, creds engine.Credentials) map[string][]byte {
	if len(creds) == 0 {
		return secrets
	}
	out := maps.Clone(secrets)
	if out == nil {
		out = map[string][]byte{}
	}
	for host, c := range creds {
		out["registry "+host+" password"] = []byte(c.Password)
		out["registry "+host+" token"] = []byte(c.IdentityToken)
	}
	return out
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
	}
}

// checkPolicy checks a BuildKit build's Dockerfile against its tenant's
// sandbox policy (package policy) before the engine runs anything, and
// returns the Dockerfile to serve the engine: the context's, with cache
// mount ids prefixed per tenant. The policy is what the gateway stamped
// into the build record (none: everything optional refused) plus the
// agent's --frontend-allow.
func (a *Agent) checkPolicy(ctx context.Context, contextDir string, b *kilnv1.Build) ([]byte, error) {
	data, err := engine.ReadDockerfile(contextDir, b.GetSpec().GetDockerfile())
	if err != nil {
		return nil, err
	}
	return a.checkDockerfiles(ctx, b, policy.FromRecord(b.GetTenant(), b.GetPolicy(), a.cfg.FrontendAllow), data)
}

// checkDockerfiles checks each of build b's Dockerfiles against p, within
// one bound on the resolution of ADD URLs' hosts, and returns the last one
// as the engine is to get it. A refusal is a *engine.BuildError.
func (a *Agent) checkDockerfiles(ctx context.Context, b *kilnv1.Build, p policy.Policy, dockerfiles ...[]byte) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out []byte
	for _, df := range dockerfiles {
		var err error
		if out, err = (&policy.Checker{}).Check(rctx, df, b.GetSpec().GetBuildArgs(), p); err != nil {
			a.log.InfoContext(ctx, "build refused by policy", "build_id", b.GetId(), "tenant", b.GetTenant(), "err", err)
			return nil, &engine.BuildError{Message: err.Error()}
		}
	}
	return out, nil
}

// classicHint explains a classic-builder failure that BuildKit would not
// have: the Dockerfile uses BuildKit-only syntax.
func classicHint(err error, offered []kilnv1.Builder) error {
	var be *engine.BuildError
	if !errors.As(err, &be) {
		return err
	}
	msg := strings.ToLower(be.Message)
	if !strings.Contains(msg, "requires buildkit") && !strings.Contains(msg, "unknown flag: mount") && !strings.Contains(msg, "<<") && !strings.Contains(msg, "unknown instruction") {
		return err
	}
	why := "this agent offers only the classic builder (its engine has no BuildKit, or it runs with --builder classic)"
	if slices.Contains(offered, kilnv1.Builder_BUILDER_BUILDKIT) {
		why = "the build asked for the classic builder (--builder classic)"
	}
	be.Message += fmt.Sprintf(" (this Dockerfile needs BuildKit — RUN --mount, heredocs and other BuildKit syntax are not understood by the classic builder — and %s)", why)
	return be
}
