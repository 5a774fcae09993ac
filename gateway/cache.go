package gateway

import (
	"context"
	"flag"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
)

// Cache options of builds (proto/rules/cacheopt): validateSpec checks their
// syntax and types; start refuses a type=registry --cache-to no agent can
// honour, and stamps the farm's automatic warm start prefix into the build.

// errNoRegistryExport is a build whose --cache-to needs the registry cache
// exporter on a farm where no live agent has it.
var errNoRegistryExport = status.Error(codes.FailedPrecondition,
	"--cache-to type=registry needs an agent whose engine exports registry cache (a standalone BuildKit agent: kiln-agent --engine buildkit://…); this farm's agents are Docker engines, which export only type=inline")

// checkRegistryExport refuses a build that needs registry cache export
// unless a live agent (one whose heartbeat has not expired) advertises
// cacheopt.RegistryExportFeature; the scheduler routes it to one.
func (g *Gateway) checkRegistryExport(ctx context.Context, spec *kilnv1.BuildSpec) error {
	if !cacheopt.NeedsRegistryExport(spec.GetCacheTo()) {
		return nil
	}
	agents, err := g.listAgents(ctx)
	if err != nil {
		return err
	}
	for _, a := range agents {
		if slices.Contains(a.GetFeatures(), cacheopt.RegistryExportFeature) {
			return nil
		}
	}
	return errNoRegistryExport
}

// stampCacheRegistry sets the build's automatic warm start prefix: the
// tenant's cache_registry, else the gateway's --cache-registry.
func stampCacheRegistry(b *kilnv1.Build, farmPrefix string) {
	if b.GetPolicy().GetCacheRegistry() != "" || farmPrefix == "" {
		return
	}
	if b.Policy == nil { // local mode: the policy carries only the prefix
		b.Policy = &kilnv1.TenantPolicy{}
	}
	b.Policy.CacheRegistry = farmPrefix
}

// cacheRegistryFlag registers --cache-registry on fs into p, checked as
// it is set (cacheopt.ValidPrefix).
func cacheRegistryFlag(fs *flag.FlagSet, p *string) {
	fs.Func("cache-registry", `repository prefix under which every successful build's cache is exported after its result and imported by the next build of its lineage, e.g. "registry:5000/kiln-cache" (automatic warm start; a tenant's cache_registry wins; "": off)`, func(s string) error {
		if err := cacheopt.ValidPrefix(s); err != nil {
			return err
		}
		*p = s
		return nil
	})
}
