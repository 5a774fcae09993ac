package gateway

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// healthRecheck bounds how long the gRPC health status may lag the NATS
// connection should a status event be dropped.
const healthRecheck = time.Second

// healthServices are the names grpc.health.v1 answers for: the server as
// a whole ("") and each kiln service.
var healthServices = []string{"", kilnv1.BuildService_ServiceDesc.ServiceName, kilnv1.ContextService_ServiceDesc.ServiceName, kilnv1.AgentService_ServiceDesc.ServiceName}

// followNATS keeps grpc.health.v1 in step with the NATS connection until
// ctx ends: SERVING while connected, NOT_SERVING while not (nothing the
// gateway serves works without NATS), as /readyz does.
func (g *Gateway) followNATS(ctx context.Context) {
	ch := g.conn.NC.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	defer g.conn.NC.RemoveStatusListener(ch)
	t := time.NewTicker(healthRecheck)
	defer t.Stop()
	serving := true
	for {
		if up := g.conn.NC.IsConnected(); up != serving {
			serving = up
			st, level := healthpb.HealthCheckResponse_NOT_SERVING, slog.LevelWarn
			if up {
				st, level = healthpb.HealthCheckResponse_SERVING, slog.LevelInfo
			}
			for _, svc := range healthServices {
				g.health.SetServingStatus(svc, st)
			}
			g.log.Log(ctx, level, "gRPC health follows the NATS connection", "status", st.String(), "nats", g.conn.NC.Status().String())
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-t.C:
		}
	}
}
