package tests

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestHealthReflectionAndHTTP checks what operators and grpcurl rely on.
func TestHealthReflectionAndHTTP(t *testing.T) {
	k := sharedKilnd(t)
	cc, err := grpc.NewClient(k.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()

	for _, svc := range []string{"", "kiln.v1.BuildService", "kiln.v1.ContextService", "kiln.v1.AgentService"} {
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q = %v, %v", svc, resp, err)
		}
	}

	stream, err := reflectpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	for _, want := range []string{"kiln.v1.BuildService", "kiln.v1.ContextService", "kiln.v1.AgentService", "grpc.health.v1.Health"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Fatalf("reflection lists %v, missing %s", names, want)
		}
	}

	agents, err := kilnv1.NewAgentServiceClient(cc).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(agents.Agents) != 1 {
		t.Fatalf("ListAgents = %v, want kilnd's one agent", agents.Agents)
	}
	if a := agents.Agents[0]; a.Name != "e2e-agent" || a.State != kilnv1.AgentState_AGENT_STATE_READY || a.EngineVersion == "" || a.EngineApiVersion == "" || a.Slots != 2 {
		t.Fatalf("agent record %v", a)
	}

	r := kiln(t, k.addrs.GRPC, "agents")
	if r.code != 0 || !strings.Contains(r.stdout, "e2e-agent") || !strings.Contains(r.stdout, "ready") {
		t.Fatalf("kiln agents: %s", r)
	}

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "go_goroutines"} {
		res, err := http.Get("http://" + k.addrs.HTTP + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s = %d %q, want 200 with %q", path, res.StatusCode, body, want)
		}
	}
}
