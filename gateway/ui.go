package gateway

import (
	"context"
	"errors"
	"flag"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/gateway/ui"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/tenants"
)

// UIFlags are the web UI's flags (kiln-gateway and kilnd).
type UIFlags struct {
	// TraceURL is a URL template with {trace_id}, for the build page's
	// trace link (Jaeger, Tempo); empty: no link.
	TraceURL string
}

// Flags registers the flags on fs.
func (o *UIFlags) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.TraceURL, "ui-trace-url", "", "web UI: URL of a build's trace, {trace_id} replaced (e.g. 'http://jaeger:16686/trace/{trace_id}'); empty: no link")
}

// UI returns the web UI served under /ui/, backed by g's own RPC methods in
// process: the same authentication (the tenants file in force), the same
// ownership checks and the same status codes as the gRPC API.
func (g *Gateway) UI(o UIFlags) *ui.Handler {
	return ui.New(uiBackend{g}, ui.Options{TraceURL: o.TraceURL, Logger: g.log.With("part", "ui")})
}

// uiBackend is the gateway as the web UI sees it.
type uiBackend struct{ g *Gateway }

var _ ui.Backend = uiBackend{}

func (b uiBackend) Local() bool { return b.g.auth.set.Load() == nil }

func (b uiBackend) Authenticate(ctx context.Context, token string) (ui.Identity, error) {
	set := b.g.auth.set.Load()
	if set == nil {
		return ui.Identity{Tenant: LocalTenant, Admin: true, Local: true}, nil
	}
	id, err := set.Authenticate(token)
	if err != nil {
		callsRefused.WithLabelValues(refusedBadToken).Inc()
		return ui.Identity{}, err
	}
	return ui.Identity{Tenant: id.Tenant.Name, Credential: id.Credential, Admin: id.Tenant.Admin}, nil
}

func (b uiBackend) Tenants() []string {
	set := b.g.auth.set.Load()
	if set == nil {
		return []string{LocalTenant}
	}
	var names []string
	for _, t := range set.Tenants() {
		names = append(names, t.Name)
	}
	return names
}

func (b uiBackend) Refresh(id ui.Identity) (ui.Identity, bool) {
	set := b.g.auth.set.Load()
	if set == nil {
		return ui.Identity{Tenant: LocalTenant, Admin: true, Local: true}, id.Local
	}
	if id.Local || !set.HasCredential(id.Tenant, id.Credential) {
		return ui.Identity{}, false
	}
	id.Admin = set.Lookup(id.Tenant).Admin
	return id, true
}

// as is ctx carrying id as the caller, as the auth interceptors set it,
// without a deadline for NATS (the status interceptors' bus.WithoutDeadline).
func (b uiBackend) as(ctx context.Context, id ui.Identity) (context.Context, context.CancelFunc) {
	c := localCaller
	if !id.Local {
		t := b.g.auth.set.Load().Lookup(id.Tenant)
		if t == nil {
			t = &tenants.Tenant{Name: id.Tenant}
		}
		c = caller{tenant: t, credential: id.Credential}
	}
	return bus.WithoutDeadline(context.WithValue(ctx, callerKey{}, c))
}

// asOwner is as, but for an admin the caller is the build's own tenant
// (with the admin role kept): admins see every tenant's builds in the UI,
// where the gRPC API's build calls answer each tenant for its own.
func (b uiBackend) asOwner(ctx context.Context, id ui.Identity, buildID string) (context.Context, context.CancelFunc) {
	if id.Admin && !id.Local {
		if rec, _, err := b.g.builds.Get(ctx, buildID); err == nil && rec.Tenant != id.Tenant {
			t := tenants.Tenant{Name: rec.Tenant, Admin: true}
			return bus.WithoutDeadline(context.WithValue(ctx, callerKey{}, caller{tenant: &t, credential: id.Credential}))
		}
	}
	return b.as(ctx, id)
}

func (b uiBackend) ListBuilds(ctx context.Context, id ui.Identity, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	cctx, cancel := b.as(ctx, id)
	defer cancel()
	resp, err := b.g.ListBuilds(cctx, req)
	return resp, toStatus(ctx, err)
}

func (b uiBackend) GetBuild(ctx context.Context, id ui.Identity, buildID string) (*kilnv1.Build, error) {
	cctx, cancel := b.asOwner(ctx, id, buildID)
	defer cancel()
	resp, err := b.g.GetBuild(cctx, &kilnv1.GetBuildRequest{BuildId: buildID})
	return resp.GetBuild(), toStatus(ctx, err)
}

func (b uiBackend) CancelBuild(ctx context.Context, id ui.Identity, buildID string) (*kilnv1.Build, error) {
	cctx, cancel := b.asOwner(ctx, id, buildID)
	defer cancel()
	resp, err := b.g.CancelBuild(cctx, &kilnv1.CancelBuildRequest{BuildId: buildID})
	return resp.GetBuild(), toStatus(ctx, err)
}

func (b uiBackend) RetryBuild(ctx context.Context, id ui.Identity, buildID string) (*kilnv1.Build, error) {
	cctx, cancel := b.asOwner(ctx, id, buildID)
	defer cancel()
	resp, err := b.g.RetryBuild(cctx, &kilnv1.RetryBuildRequest{BuildId: buildID})
	return resp.GetBuild(), toStatus(ctx, err)
}

func (b uiBackend) ListAgents(ctx context.Context, id ui.Identity) ([]*kilnv1.Agent, error) {
	cctx, cancel := b.as(ctx, id)
	defer cancel()
	resp, err := b.g.ListAgents(cctx, &kilnv1.ListAgentsRequest{})
	return resp.GetAgents(), toStatus(ctx, err)
}

func (b uiBackend) DrainAgent(ctx context.Context, id ui.Identity, name string, undrain bool) error {
	cctx, cancel := b.as(ctx, id)
	defer cancel()
	_, err := b.g.DrainAgent(cctx, &kilnv1.DrainAgentRequest{Name: name, Undrain: undrain})
	return toStatus(ctx, err)
}

func (b uiBackend) WatchBuild(ctx context.Context, id ui.Identity, buildID string, from uint64, send func(*kilnv1.BuildEvent) error) error {
	cctx, cancel := b.asOwner(ctx, id, buildID)
	defer cancel()
	err := b.g.WatchBuild(&kilnv1.WatchBuildRequest{BuildId: buildID, FromSequence: from}, &uiWatch{ctx: cctx, send: send})
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return toStatus(ctx, err)
}

// uiWatch is WatchBuild's stream, in process: each event goes to send.
type uiWatch struct {
	grpc.ServerStream
	ctx  context.Context
	send func(*kilnv1.BuildEvent) error
}

func (w *uiWatch) Context() context.Context { return w.ctx }

func (w *uiWatch) Send(r *kilnv1.WatchBuildResponse) error { return w.send(r.GetEvent()) }

func (w *uiWatch) SendMsg(m any) error {
	r, ok := m.(*kilnv1.WatchBuildResponse)
	if !ok {
		return status.Errorf(codes.Internal, "watch sent %T", m)
	}
	return w.Send(r)
}
