package gateway

import (
	"context"
	"strings"

	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/tenants"
)

// checkNamespaces refuses a build whose tags fall outside the caller's push
// namespaces. Every tag is checked, pushed or not: a tag names an image on
// the agent's engine too, which a later build on that engine may take as a
// base, so a tenant tags only its own names. The local tenant may use any.
func checkNamespaces(ctx context.Context, spec *kilnv1.BuildSpec) error {
	c := callerOf(ctx)
	if c.local {
		return nil
	}
	for _, tag := range spec.GetTags() {
		named, err := reference.ParseNormalizedNamed(tag)
		if err != nil {
			return invalid("tag %q: %v", tag, err) // validateSpec has refused it already
		}
		repo := tenants.NormalizeRepository(reference.Domain(named) + "/" + reference.Path(named))
		if !c.tenant.MayPush(repo) {
			callsRefused.WithLabelValues(refusedOutsideNamespace).Inc()
			allowed := "none"
			if len(c.tenant.PushNamespaces) > 0 {
				allowed = strings.Join(c.tenant.PushNamespaces, ", ")
			}
			return status.Errorf(codes.PermissionDenied, "tag %q is outside tenant %q's image namespaces (%s): ask the farm's operator to add it to the tenant's push list", tag, c.tenant.Name, allowed)
		}
	}
	return nil
}
