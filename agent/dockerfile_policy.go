package agent

import (
	"context"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/policy"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// checkPolicy checks a BuildKit build's Dockerfile against its tenant's
// sandbox policy (package policy) before the engine runs anything, and
// returns the Dockerfile to serve the engine: the context's, with cache
// mount ids prefixed per tenant. The policy is what the gateway stamped
// into the build record (none: everything optional refused) plus the
// agent's --frontend-allow.
func (a *Agent) checkPolicy(ctx context.Context, contextDir string, b *kilnv1.Build) ([]byte, error) {
	data := b.GetSpec().GetDockerfileInline() // sent apart from the context
	if len(data) == 0 {
		var err error
		if data, err = engine.ReadDockerfile(contextDir, b.GetSpec().GetDockerfile()); err != nil {
			return nil, err
		}
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
