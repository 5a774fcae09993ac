package gateway

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// ListAgents returns the agents whose heartbeat has not expired.
// Only admin tenants may.
func (g *Gateway) ListAgents(ctx context.Context, _ *kilnv1.ListAgentsRequest) (*kilnv1.ListAgentsResponse, error) {
	if err := requireAdmin(ctx, "listing agents"); err != nil {
		return nil, err
	}
	agents, err := g.listAgents(ctx)
	if err != nil {
		return nil, err
	}
	return &kilnv1.ListAgentsResponse{Agents: agents}, nil
}

// listAgents returns the agents' heartbeat records, by name.
func (g *Gateway) listAgents(ctx context.Context) ([]*kilnv1.Agent, error) {
	lister, err := g.agents.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	var agents []*kilnv1.Agent
	for k := range lister.Keys() {
		e, err := g.agents.Get(ctx, k)
		if bus.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read agent %s: %w", k, err)
		}
		a := &kilnv1.Agent{}
		if err := bus.Decode(e.Value(), a); err != nil {
			return nil, fmt.Errorf("agent %s: %w", k, err)
		}
		agents = append(agents, a)
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].Name < agents[j].Name })
	return agents, nil
}

// drainAnswerWait is how long DrainAgent waits for the agent's
// acknowledgement (the agent writes its heartbeat before answering).
const drainAnswerWait = 10 * time.Second

// DrainAgent asks an agent to stop taking new builds, or with undrain to
// take them again, and returns its record once the agent has acknowledged.
// Running builds finish; the agent stays up, listed as DRAINING. Only
// admin tenants may. An agent without a live heartbeat is NotFound; one
// that does not answer is Unavailable.
func (g *Gateway) DrainAgent(ctx context.Context, req *kilnv1.DrainAgentRequest) (*kilnv1.DrainAgentResponse, error) {
	what := "draining an agent"
	if req.GetUndrain() {
		what = "undraining an agent"
	}
	if err := requireAdmin(ctx, what); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := bus.CheckAgentName(name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if _, err := g.agents.Get(ctx, name); bus.IsNotFound(err) {
		return nil, status.Errorf(codes.NotFound, "no agent %q (see ListAgents)", name)
	} else if err != nil {
		return nil, fmt.Errorf("read agent %s: %w", name, err)
	}
	msg, err := bus.NewMsg(bus.DrainSubject(name), &kilnv1.DrainAgentRequest{Name: name, Undrain: req.GetUndrain()})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, drainAnswerWait)
	defer cancel()
	reply, err := g.conn.NC.RequestMsgWithContext(rctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, status.Errorf(codes.Unavailable, "agent %q is not listening for drain requests (stopped, or older than DrainAgent)", name)
	case err != nil && ctx.Err() == nil && rctx.Err() != nil:
		return nil, status.Errorf(codes.Unavailable, "agent %q did not acknowledge within %s", name, drainAnswerWait)
	case err != nil:
		return nil, fmt.Errorf("drain request to agent %s: %w", name, err)
	}
	resp := &kilnv1.DrainAgentResponse{}
	if err := bus.Decode(reply.Data, resp); err != nil {
		return nil, fmt.Errorf("answer of agent %s: %w", name, err)
	}
	g.log.InfoContext(ctx, "agent drain requested", "agent", name, "by", callerOf(ctx).tenant.Name, "undrain", req.GetUndrain(), "state", resp.GetAgent().GetState().String())
	return resp, nil
}
