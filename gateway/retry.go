package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// RetryBuild queues a new build with a finished build's spec — its sealed
// secrets, registry credentials and seal nonce included — and context, on
// StartBuild's path (start): the same checks, today's tenant policy and
// secrets key, the idempotency key honoured the same way. Another
// tenant's build is NotFound, as for GetBuild; a build not finished yet,
// or whose context the farm no longer holds, is FailedPrecondition.
func (g *Gateway) RetryBuild(ctx context.Context, req *kilnv1.RetryBuildRequest) (*kilnv1.RetryBuildResponse, error) {
	ctx, span := tracer.Start(ctx, "RetryBuild", trace.WithAttributes(telemetry.Component("gateway")))
	defer span.End()
	orig, err := g.getOwned(ctx, req.GetBuildId())
	if err != nil {
		return nil, err
	}
	if !buildstore.Terminal(orig.State) {
		return nil, status.Errorf(codes.FailedPrecondition, "build %s is %s: only a finished build can be retried (cancel it first, or watch it)", orig.Id, stateName(orig.State))
	}
	b, err := g.start(ctx, buildStart{
		spec: proto.CloneOf(orig.Spec), context: orig.Context, idempotencyKey: req.GetIdempotencyKey(),
		hash: retryHash(orig.Id), retryOf: orig.Id,
	})
	if err != nil {
		return nil, err
	}
	return &kilnv1.RetryBuildResponse{Build: b}, nil
}

// retryHash identifies a RetryBuild of build id under an idempotency key;
// no StartBuild shares it.
func retryHash(id string) string {
	sum := sha256.Sum256([]byte("RetryBuild\x00" + id))
	return hex.EncodeToString(sum[:])
}

// stateName is a build state as people write it ("running").
func stateName(st kilnv1.BuildState) string {
	name, ok := kilnv1.BuildState_name[int32(st)]
	if !ok {
		return st.String()
	}
	return strings.ToLower(strings.TrimPrefix(name, "BUILD_STATE_"))
}
