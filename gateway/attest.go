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
	"github.com/kilnbuild/kiln/proto/rules/annotations"
	"github.com/kilnbuild/kiln/proto/rules/attest"
)

// featureFlags name, for a person, the flags that need each engine
// feature proto/rules/attest.Features lists.
var featureFlags = map[string]string{
	annotations.Feature:        "--annotation",
	attest.FeatureAttestations: "--provenance and --sbom",
	attest.FeatureCall:         "--call and --check",
}

// checkAttest checks a build's annotations, attestations and --call
// (proto/rules/attest.CheckSpec: InvalidArgument, ResourceExhausted over
// a limit) and refuses them with FailedPrecondition unless a live agent
// (one whose heartbeat has not expired) has every engine feature they
// need; the scheduler routes the build to such an agent.
func (g *Gateway) checkAttest(ctx context.Context, spec *kilnv1.BuildSpec) error {
	if err := attest.CheckSpec(spec); err != nil {
		if errors.Is(err, rules.ErrOverLimit) {
			return status.Error(codes.ResourceExhausted, err.Error())
		}
		return status.Error(codes.InvalidArgument, err.Error())
	}
	need := attest.Features(spec)
	if len(need) == 0 {
		return nil
	}
	agents, err := g.listAgents(ctx)
	if err != nil {
		return err
	}
	for _, a := range agents {
		if !slices.ContainsFunc(need, func(f string) bool { return !slices.Contains(a.GetFeatures(), f) }) {
			return nil
		}
	}
	var flags []string
	for _, f := range need {
		flags = append(flags, featureFlags[f])
	}
	return status.Errorf(codes.FailedPrecondition,
		"%s need an agent whose engine is a standalone BuildKit (kiln-agent --engine buildkit://…), and no live agent of this farm has one: a Docker engine's build API passes no annotations, attestation or frontend request attributes to its BuildKit",
		strings.Join(flags, ", "))
}
