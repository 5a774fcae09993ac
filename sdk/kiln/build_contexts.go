package kiln

import (
	"context"
	"fmt"
	"slices"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
)

// PackNamedContext packs dir as a named build context (buildx
// --build-context NAME=DIR) the way PackContext packs the main one, with
// the same stat cache, and with no Dockerfile: only dir's .dockerignore is
// honoured, as BuildKit honours it for a named context. Give it to Build
// in BuildRequest.BuildContexts; its files travel through the farm's
// content store like the main context's, each blob once whichever context
// holds it.
func PackNamedContext(ctx context.Context, dir string, opts ...PackOption) (*Context, error) {
	return PackContext(ctx, dir, "", append(opts, func(o *packOptions) { o.named = true })...)
}

// uploadBuildContexts uploads the named contexts of req that are not
// uploaded yet.
func (c *Client) uploadBuildContexts(ctx context.Context, req BuildRequest) error {
	for _, name := range sortedNames(req.BuildContexts) {
		bc := req.BuildContexts[name]
		if bc == nil {
			return invalidArgumentf("build context %q: no packed context", name)
		}
		if bc.Ref() != nil {
			continue
		}
		if _, err := c.UploadContext(ctx, bc); err != nil {
			return fmt.Errorf("build context %s: %w", name, err)
		}
	}
	return nil
}

// addBuildContexts adds req's uploaded named contexts to spec's
// build_contexts, by name, and checks them with the spec's own sources
// (namedctx.Check) and its Git URL context (gitctx.Parse).
func addBuildContexts(spec *kilnv1.BuildSpec, req BuildRequest) error {
	for _, name := range sortedNames(req.BuildContexts) {
		norm, err := namedctx.NormalizeName(name)
		if err != nil {
			return invalidArgumentf("%s", err)
		}
		ref := req.BuildContexts[name].Ref()
		if ref == nil {
			return invalidArgumentf("build context %q was not uploaded", name)
		}
		spec.BuildContexts = append(spec.BuildContexts, &kilnv1.NamedContext{Name: norm, Context: ref})
	}
	if err := namedctx.Check(spec.BuildContexts); err != nil {
		return invalidArgumentf("%s", err)
	}
	if spec.GitContext != "" {
		if _, err := gitctx.Parse(spec.GitContext); err != nil {
			return invalidArgumentf("%s", err)
		}
	}
	return nil
}

func sortedNames(m map[string]*Context) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, strings.Compare)
	return names
}
