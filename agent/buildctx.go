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
	"github.com/kilnbuild/kiln/agent/workdir"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// buildDir is a BuildKit build's main context directory: a work directory
// materialized from the CAS (*workdir.Dir), or a Git URL context fetched
// for the build (*gitDir). Slot names it for the engine's shared key.
type buildDir interface {
	Path() string
	Slot() string
	Release()
}

var (
	_ buildDir = (*workdir.Dir)(nil)
	_ buildDir = (*gitDir)(nil)
)

// contextDir makes b's main context a directory the engine syncs from: the
// uploaded manifest materialized into the lineage's work directory, or the
// Git URL context fetched (fetchGitContext).
func (a *Agent) contextDir(ctx context.Context, b *kilnv1.Build, ev *events) (buildDir, error) {
	if b.GetSpec().GetGitContext() != "" {
		return a.fetchGitContext(ctx, b, ev)
	}
	ref := b.GetContext()
	if ref.GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST || ref.GetDigest() == nil {
		return nil, errors.New("BuildKit builds need a manifest context (kiln CLI 0.2 or later); this build's context is a tar: run it with --builder classic")
	}
	key := b.GetAffinity().GetLineage()
	if key == "" {
		key = "kiln:no-lineage" // builds without one share directories, reused slot by slot
	}
	return a.materialize(ctx, b, ref, key, "context", ev)
}

// materialize writes an uploaded manifest context into a work directory
// under key, pinned until released: the blobs this agent lacks are
// fetched into its local CAS, and only the entries that differ from the
// directory's last content are written. label names the context in the
// build's log, spans and errors ("context", "context base").
func (a *Agent) materialize(ctx context.Context, b *kilnv1.Build, ref *kilnv1.ContextRef, key, label string, ev *events) (*workdir.Dir, error) {
	what := "build " + label
	m, err := a.readManifest(ctx, ref.Digest)
	if err != nil {
		return nil, err
	}
	total, err := ctxmanifest.Validate(m, a.cfg.ContextLimits)
	if err != nil {
		return nil, fmt.Errorf("%s manifest %s is refused: %s", label, ref.Digest.Hash, status.Convert(err).Message())
	}
	var files []localcas.Blob
	for _, e := range m.Entries {
		if e.Type == kilnv1.EntryType_ENTRY_TYPE_FILE {
			files = append(files, localcas.Blob{Digest: e.Digest.Hash, Size: e.Size})
		}
	}
	fctx, fetch := startSpan(ctx, label+" fetch", b, attribute.Int("kiln.context.files", len(files)))
	pin, st, err := a.cache.Ensure(fctx, files, a.blobs.Get)
	fetch.SetAttributes(attribute.Int("kiln.context.fetched_blobs", st.Fetched), attribute.Int64("kiln.context.fetched_bytes", st.FetchedBytes))
	endSpan(fetch, err)
	if err != nil {
		return nil, fmt.Errorf("fetch %s files: %w", what, farm(err))
	}
	observeContextFetch(st)
	started := time.Now()
	mctx, materialize := startSpan(ctx, label+" materialize", b)
	dir, ws, err := a.workdirs.Materialize(mctx, key, m, a.cache)
	endSpan(materialize, err)
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("write the %s to the agent's work directory: %w", what, err)
	}
	ev.internal("%s: %d files, %s; fetched %d blobs (%s) from the farm, %d already on this agent; work dir %s: %d entries written (%s), %d removed, %d kept in %s",
		label, len(files), megabytes(total), st.Fetched, megabytes(st.FetchedBytes), st.Local,
		dir.Slot(), ws.Written, megabytes(ws.WrittenBytes), ws.Removed, ws.Kept, time.Since(started).Round(time.Millisecond))
	ev.logger.InfoContext(ctx, what+" ready", "manifest", ref.Digest.Hash, "files", len(files), "bytes", total,
		"fetched_blobs", st.Fetched, "fetched_bytes", st.FetchedBytes, "workdir", dir.Slot(),
		"written", ws.Written, "written_bytes", ws.WrittenBytes, "removed", ws.Removed, "kept", ws.Kept)
	return dir, nil
}

// namedContexts readies b's named contexts (--build-context) for the
// engine: each uploaded one materialized like the main context, into a
// work directory of its own per lineage and name, and each source passed
// as it is. release unpins the work directories; it is never nil.
func (a *Agent) namedContexts(ctx context.Context, b *kilnv1.Build, ev *events) (_ []engine.NamedContext, release func(), err error) {
	var dirs []*workdir.Dir
	release = func() {
		for _, d := range dirs {
			d.Release()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	ncs := b.GetSpec().GetBuildContexts()
	if err := namedctx.Check(ncs); err != nil {
		return nil, release, &engine.BuildError{Message: err.Error()}
	}
	out := make([]engine.NamedContext, 0, len(ncs))
	for _, nc := range ncs {
		if nc.GetContext() == nil {
			out = append(out, engine.NamedContext{Name: nc.GetName(), Source: nc.GetSource()})
			continue
		}
		key := b.GetAffinity().GetLineage() + "\x00build-context\x00" + nc.GetName()
		dir, err := a.materialize(ctx, b, nc.GetContext(), key, "context "+nc.GetName(), ev)
		if err != nil {
			return nil, release, err
		}
		dirs = append(dirs, dir)
		out = append(out, engine.NamedContext{Name: nc.GetName(), Dir: dir.Path(), LocalName: namedctx.LocalName(nc.GetName())})
	}
	return out, release, nil
}
