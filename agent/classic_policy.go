package agent

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/agent/policy"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// checkClassicPolicy checks a classic build's Dockerfile against its
// tenant's policy before the engine gets the context. The classic
// builder fetches ADD URLs itself, from the engine's host network: the
// same refusals as for BuildKit apply (frontends and RUN flags do not:
// it has neither). The Dockerfile is read from the context as the engine
// would find it (the default name falls back to "dockerfile"); a tar
// that holds it more than once is checked in every copy, and one that
// is not a regular file is refused. A Dockerfile sent apart from the
// context (dockerfile_inline) is the one checked: the build adds it to the
// context tar (addInlineDockerfile).
func (a *Agent) checkClassicPolicy(ctx context.Context, b *kilnv1.Build) error {
	p := policy.FromRecord(b.GetTenant(), b.GetPolicy(), a.cfg.FrontendAllow)
	p.Classic = true
	if df := b.GetSpec().GetDockerfileInline(); len(df) > 0 { // sent apart from the context
		_, err := a.checkDockerfiles(ctx, b, p, df)
		return err
	}
	names := map[string]bool{}
	if df := b.GetSpec().GetDockerfile(); df != "" {
		names[path.Clean("/" + df)[1:]] = true
	} else {
		names["Dockerfile"], names["dockerfile"] = true, true
	}
	dockerfiles, err := a.classicDockerfiles(ctx, b.GetContext(), names)
	if err != nil {
		return err
	}
	_, err = a.checkDockerfiles(ctx, b, p, dockerfiles...)
	return err
}

// classicDockerfiles reads every copy of the named files in a context.
func (a *Agent) classicDockerfiles(ctx context.Context, ref *kilnv1.ContextRef, names map[string]bool) ([][]byte, error) {
	d := ref.GetDigest()
	if d == nil {
		return nil, errors.New("build has no context")
	}
	var out [][]byte
	notRegular := func(name string) error {
		return &engine.BuildError{Message: fmt.Sprintf("the Dockerfile %s is not a regular file in the build context; the agent checks the Dockerfile before a build and reads only regular files", name)}
	}
	if ref.GetFormat() == kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
		m, err := a.readManifest(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, e := range m.GetEntries() {
			if !names[e.GetPath()] {
				continue
			}
			if e.GetType() != kilnv1.EntryType_ENTRY_TYPE_FILE || e.GetDigest() == nil || e.GetSocket() {
				return nil, notRegular(e.GetPath())
			}
			if e.GetSize() > engine.MaxDockerfileBytes {
				return nil, &engine.BuildError{Message: fmt.Sprintf("the Dockerfile %s is larger than %d bytes", e.GetPath(), engine.MaxDockerfileBytes)}
			}
			pin, _, err := a.cache.Ensure(ctx, []localcas.Blob{{Digest: e.Digest.Hash, Size: e.GetSize()}}, a.blobs.Get)
			if err != nil {
				return nil, fmt.Errorf("fetch the Dockerfile: %w", farm(err))
			}
			r, err := a.cache.Open(e.Digest.Hash)
			if err != nil {
				pin.Release()
				return nil, fmt.Errorf("read the Dockerfile: %w", err)
			}
			data, err := io.ReadAll(io.LimitReader(r, engine.MaxDockerfileBytes))
			r.Close()
			pin.Release()
			if err != nil {
				return nil, fmt.Errorf("read the Dockerfile: %w", err)
			}
			out = append(out, data)
		}
		return out, nil
	}
	r, err := a.blobs.Get(ctx, d.Hash)
	if err != nil {
		return nil, fmt.Errorf("fetch build context: %w", farm(err))
	}
	// A read the farm cut short (NATS restarting mid-stream) is the
	// farm's failure, handed back; only a tar that does not parse is the
	// build's.
	rec := &errRecorder{r: r}
	defer rec.Close()
	tr := tar.NewReader(rec)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if rec.err != nil {
			return nil, fmt.Errorf("fetch build context: %w", farm(rec.err))
		}
		if err != nil {
			return nil, &engine.BuildError{Message: fmt.Sprintf("the build context is not a readable tar: %v", err)}
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if !names[name] {
			continue
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != 0 { // 0: the old regular-file flag
			return nil, notRegular(name)
		}
		if h.Size > engine.MaxDockerfileBytes {
			return nil, &engine.BuildError{Message: fmt.Sprintf("the Dockerfile %s is larger than %d bytes", name, engine.MaxDockerfileBytes)}
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("read the build context: %w", farm(err))
		}
		out = append(out, data)
	}
}
