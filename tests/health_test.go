package tests

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/kilnbuild/kiln/agent/enginetest"
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

// readyz returns the status code and body of GET http://addr/readyz.
func readyz(t testing.TB, addr string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s/readyz: %v", addr, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// healthStatus is what a grpc_health_probe would see for service.
func healthStatus(hc healthpb.HealthClient, service string) healthpb.HealthCheckResponse_ServingStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return resp.Status
}

// TestHealthFollowsNATS stops the NATS server under a farm of separate
// processes: the gateway's grpc.health.v1 turns NOT_SERVING and /readyz of
// the gateway, the scheduler and the agent answers 503 naming NATS, while
// /healthz stays 200 (the processes are alive); when NATS returns, all are
// SERVING and 200 again.
func TestHealthFollowsNATS(t *testing.T) {
	engines := enginetest.StartEngines(t, "health1")
	f := startFaultFarm(t, faultFarmOptions{}, engines, "health-a")
	cc, err := grpc.NewClient(f.gw.addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	services := []string{"", "kiln.v1.BuildService", "kiln.v1.ContextService", "kiln.v1.AgentService"}
	procs := f.running()
	for _, svc := range services {
		if st := healthStatus(hc, svc); st != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q = %s before NATS stops, want SERVING", svc, st)
		}
	}
	for _, p := range procs {
		if code, body := readyz(t, p.addrs["http"]); code != http.StatusOK {
			t.Fatalf("%s /readyz = %d %q before NATS stops, want 200", p.name, code, body)
		}
	}

	f.restartNATS(func() {
		waitFor(t, 30*time.Second, "the gateway's gRPC health to turn NOT_SERVING", func() bool {
			for _, svc := range services {
				if healthStatus(hc, svc) != healthpb.HealthCheckResponse_NOT_SERVING {
					return false
				}
			}
			return true
		})
		for _, p := range procs {
			code, body := readyz(t, p.addrs["http"])
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "nats") {
				t.Errorf("%s /readyz = %d %q while NATS is down, want 503 naming nats", p.name, code, body)
			}
			res, err := http.Get("http://" + p.addrs["http"] + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Errorf("%s /healthz = %d while NATS is down, want 200: the process is alive", p.name, res.StatusCode)
			}
		}
	})
	// restartNATS has waited for every /readyz to answer 200 again.
	waitFor(t, 30*time.Second, "the gateway's gRPC health to be SERVING again", func() bool {
		for _, svc := range services {
			if healthStatus(hc, svc) != healthpb.HealthCheckResponse_SERVING {
				return false
			}
		}
		return true
	})
	for _, p := range procs {
		if code, body := readyz(t, p.addrs["http"]); code != http.StatusOK {
			t.Errorf("%s /readyz = %d %q after NATS returned, want 200", p.name, code, body)
		}
	}
}
