package gateway

import (
	"context"
	"errors"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
)

// Build contexts besides the uploaded main one: named contexts
// (--build-context, proto/rules/namedctx) and a Git URL as the main
// context (proto/rules/gitctx). start checks them with the spec, each
// uploaded named context like the main one, and refuses named contexts
// when no live agent's engine resolves them.

// errNoNamedContexts is a build with named contexts on a farm where no
// live agent's engine has namedctx.Feature.
var errNoNamedContexts = status.Error(codes.FailedPrecondition,
	"--build-context needs an agent whose engine resolves named contexts (a standalone BuildKit agent: kiln-agent --engine buildkit://…); this farm's agents are Docker engines, whose /build API does not take them")

// checkBuildContexts checks spec's named contexts and Git URL context:
// their syntax (InvalidArgument, ResourceExhausted over a limit), each
// uploaded named context's manifest and blobs (as checkContext checks the
// main one), and that a live agent can build named contexts
// (FailedPrecondition).
func (g *Gateway) checkBuildContexts(ctx context.Context, spec *kilnv1.BuildSpec, limits Limits) error {
	if err := ruleStatus(namedctx.Check(spec.GetBuildContexts())); err != nil {
		return err
	}
	if spec.GetGitContext() != "" {
		if _, err := gitctx.Parse(spec.GetGitContext()); err != nil {
			return ruleStatus(err)
		}
		if spec.GetBuilder() == kilnv1.Builder_BUILDER_CLASSIC {
			return invalid("a Git URL context needs the BuildKit builder: drop --builder classic")
		}
	}
	if len(spec.GetBuildContexts()) == 0 {
		return nil
	}
	if spec.GetBuilder() == kilnv1.Builder_BUILDER_CLASSIC {
		return invalid("--build-context needs the BuildKit builder: drop --builder classic")
	}
	for _, nc := range spec.GetBuildContexts() {
		ref := nc.GetContext()
		if ref == nil {
			continue
		}
		if err := validateContextRef(ref, limits); err != nil {
			return prefixStatus(err, "build context "+nc.GetName()+": ")
		}
		if _, err := g.checkContext(ctx, ref, "", limits.Context); err != nil {
			return prefixStatus(err, "build context "+nc.GetName()+": ")
		}
	}
	agents, err := g.listAgents(ctx)
	if err != nil {
		return err
	}
	for _, a := range agents {
		if slices.Contains(a.GetFeatures(), namedctx.Feature) {
			return nil
		}
	}
	return errNoNamedContexts
}

// validateMainContext checks the main context's reference: an uploaded
// context (validateContextRef), or none for a build whose context is a
// Git URL.
func validateMainContext(spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef, limits Limits) error {
	if spec.GetGitContext() == "" {
		return validateContextRef(ref, limits)
	}
	if ref != nil {
		return invalid("a build whose context is a Git URL (git_context) takes no uploaded context: send one or the other")
	}
	return nil
}

// checkMainContext is checkContext for the main context; a Git URL
// context has nothing uploaded to check and no Dockerfile the gateway can
// read, so the build routes by its lineage alone.
func (g *Gateway) checkMainContext(ctx context.Context, spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef, dockerfile string, limits Limits) ([]byte, error) {
	if spec.GetGitContext() != "" {
		return nil, nil
	}
	return g.checkContext(ctx, ref, dockerfile, limits.Context)
}

// ruleStatus turns a proto/rules error into its gRPC status.
func ruleStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rules.ErrOverLimit):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return invalid("%v", err)
}

// prefixStatus prefixes a status error's message, keeping its code.
func prefixStatus(err error, prefix string) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return status.Error(s.Code(), prefix+strings.TrimPrefix(s.Message(), "context "))
}
