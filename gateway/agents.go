package gateway

import (
	"context"
	"fmt"
	"sort"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// ListAgents returns the agents whose heartbeat has not expired.
// Only admin tenants may.
func (g *Gateway) ListAgents(ctx context.Context, _ *kilnv1.ListAgentsRequest) (*kilnv1.ListAgentsResponse, error) {
	if err := requireAdmin(ctx, "listing agents"); err != nil {
		return nil, err
	}
	lister, err := g.agents.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	resp := &kilnv1.ListAgentsResponse{}
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
		resp.Agents = append(resp.Agents, a)
	}
	sort.Slice(resp.Agents, func(i, j int) bool { return resp.Agents[i].Name < resp.Agents[j].Name })
	return resp, nil
}
