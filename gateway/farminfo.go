package gateway

import (
	"context"
	"fmt"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/services/bus"
)

// GetFarmInfo returns the versions of the farm's parts (kiln version):
// this gateway's, the scheduler leader's (from its lease record in
// KILN_LEADER, which carries its version) and every agent's with its
// engine. Any tenant may ask; a tenant that is not admin gets the agents'
// versions, engines, platforms and states but not their names, labels or
// cache summaries, which ListAgents keeps for admins.
func (g *Gateway) GetFarmInfo(ctx context.Context, _ *kilnv1.GetFarmInfoRequest) (*kilnv1.GetFarmInfoResponse, error) {
	resp := &kilnv1.GetFarmInfoResponse{GatewayVersion: version.String()}
	sched, err := g.schedulerVersion(ctx)
	if err != nil {
		return nil, err
	}
	resp.SchedulerVersion = sched
	agents, err := g.listAgents(ctx)
	if err != nil {
		return nil, err
	}
	admin := callerOf(ctx).tenant.Admin
	for _, a := range agents {
		if !admin {
			a = &kilnv1.Agent{
				State: a.State, Slots: a.Slots, BusySlots: a.BusySlots, Version: a.Version,
				EngineVersion: a.EngineVersion, EngineApiVersion: a.EngineApiVersion, StorageDriver: a.StorageDriver,
				Os: a.Os, Arch: a.Arch, Builders: a.Builders,
			}
		}
		resp.Agents = append(resp.Agents, a)
	}
	return resp, nil
}

// schedulerVersion is the version in the scheduler leader's lease record,
// "" when no scheduler holds a live lease.
func (g *Gateway) schedulerVersion(ctx context.Context) (string, error) {
	e, err := g.leader.Get(ctx, bus.LeaderKeyScheduler)
	if bus.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the scheduler leader's lease: %w", err)
	}
	l := &kilnv1.LeaderLease{}
	if err := bus.Decode(e.Value(), l); err != nil {
		return "", fmt.Errorf("scheduler leader's lease: %w", err)
	}
	if l.ExpiresAt == nil || !time.Now().Before(l.ExpiresAt.AsTime()) {
		return "", nil
	}
	return l.Version, nil
}
