package gateway

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/services/tenants"
)

// LocalTenant is the one tenant of a gateway without a tenants file: it
// needs no token, is admin, may push anywhere, and its builds carry no
// policy (the agent's flags decide, as on a one-user machine).
const LocalTenant = "default"

// defaultTenant is LocalTenant, the name the package's tests use.
const defaultTenant = LocalTenant

// caller is who an RPC is from.
type caller struct {
	tenant *tenants.Tenant
	// credential names the token hash the caller's token matched (see
	// tenants.Identity); "" in local mode.
	credential string
	// local is set in single-tenant local mode.
	local bool
}

type callerKey struct{}

// callerOf returns the authenticated caller of ctx. Every RPC but health
// and reflection passes the auth interceptors, which set it (the local
// tenant in local mode). A context without one fails closed: nobody, who
// owns no build, is no admin and may push nowhere.
func callerOf(ctx context.Context) caller {
	if c, ok := ctx.Value(callerKey{}).(caller); ok {
		return c
	}
	return nobody
}

var nobody = caller{tenant: &tenants.Tenant{Name: ""}}

var localCaller = caller{tenant: &tenants.Tenant{Name: LocalTenant, Admin: true}, local: true}

// tenantOf returns the name of the tenant calling.
func tenantOf(ctx context.Context) string { return callerOf(ctx).tenant.Name }

// authenticator checks callers' tokens against the current tenants file,
// and ends the open streams of tokens a reload removes.
type authenticator struct {
	// set is the tenants file in force; nil in local mode.
	set atomic.Pointer[tenants.Set]

	log *slog.Logger

	mu      sync.Mutex
	streams map[*openStream]struct{} // guarded by mu
}

// callsRefused counts calls refused by authentication and authorisation.
var callsRefused = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "kiln_gateway_calls_refused_total",
	Help: "Calls refused: missing_token, bad_token (malformed, unknown or revoked), revoked_stream (a stream ended by a tenants-file reload), not_admin, outside_namespace.",
}, []string{"reason"})

// Values of kiln_gateway_calls_refused_total's reason label.
const (
	refusedMissingToken     = "missing_token"
	refusedBadToken         = "bad_token"
	refusedRevokedStream    = "revoked_stream"
	refusedNotAdmin         = "not_admin"
	refusedOutsideNamespace = "outside_namespace"
)

func init() {
	for _, r := range []string{refusedMissingToken, refusedBadToken, refusedRevokedStream, refusedNotAdmin, refusedOutsideNamespace} {
		callsRefused.WithLabelValues(r)
	}
}

// openStream is one stream RPC in progress, to end when its token is
// revoked.
type openStream struct {
	tenant, credential string
	cancel             context.CancelCauseFunc
}

// errRevoked ends the streams of a token a reload removed.
var errRevoked = errors.New("token revoked: the tenants file no longer holds it")

// unauthenticatedMethods need no token: health checks and reflection.
func unauthenticatedMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// authenticate returns the caller of an RPC from its authorization
// metadata, and counts and logs refusals (never the token).
func (a *authenticator) authenticate(ctx context.Context, method string) (caller, error) {
	set := a.set.Load()
	if set == nil {
		return localCaller, nil
	}
	c, reason, err := authenticateWith(ctx, set)
	if err != nil {
		callsRefused.WithLabelValues(reason).Inc()
		addr := ""
		if p, ok := peer.FromContext(ctx); ok {
			addr = p.Addr.String()
		}
		if a.log != nil {
			a.log.InfoContext(ctx, "call refused: unauthenticated", "method", method, "peer", addr, "reason", reason)
		}
	}
	return c, err
}

func authenticateWith(ctx context.Context, set *tenants.Set) (caller, string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return caller{}, refusedMissingToken, status.Error(codes.Unauthenticated, "this farm needs a token: pass --token, --token-file or KILN_TOKEN (sent as \"authorization: Bearer <token>\")")
	}
	if len(values) > 1 {
		return caller{}, refusedBadToken, status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return caller{}, refusedBadToken, status.Error(codes.Unauthenticated, `authorization metadata must be "Bearer <token>"`)
	}
	id, err := set.Authenticate(strings.TrimSpace(token))
	if err != nil {
		return caller{}, refusedBadToken, status.Error(codes.Unauthenticated, err.Error())
	}
	return caller{tenant: id.Tenant, credential: id.Credential}, "", nil
}

// reload puts set in force and ends the open streams whose token it no
// longer holds. set must not be nil: a gateway started with a tenants file
// stays multi-tenant.
func (a *authenticator) reload(set *tenants.Set) (revoked int) {
	a.set.Store(set)
	a.mu.Lock()
	defer a.mu.Unlock()
	for s := range a.streams {
		if !set.HasCredential(s.tenant, s.credential) {
			s.cancel(errRevoked)
			delete(a.streams, s)
			revoked++
		}
	}
	return revoked
}

// track registers a stream of c until the returned func is called.
func (a *authenticator) track(c caller, cancel context.CancelCauseFunc) func() {
	if c.local {
		return func() {}
	}
	s := &openStream{tenant: c.tenant.Name, credential: c.credential, cancel: cancel}
	a.mu.Lock()
	if a.streams == nil {
		a.streams = map[*openStream]struct{}{}
	}
	a.streams[s] = struct{}{}
	set := a.set.Load()
	a.mu.Unlock()
	// A reload between authentication and here would have missed s.
	if set != nil && !set.HasCredential(s.tenant, s.credential) {
		cancel(errRevoked)
	}
	return func() {
		a.mu.Lock()
		delete(a.streams, s)
		a.mu.Unlock()
	}
}

func (a *authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if unauthenticatedMethod(info.FullMethod) {
		return h(ctx, req)
	}
	c, err := a.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(context.WithValue(ctx, callerKey{}, c), req)
}

func (a *authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if unauthenticatedMethod(info.FullMethod) {
		return h(srv, ss)
	}
	c, err := a.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(context.WithValue(ss.Context(), callerKey{}, c))
	defer cancel(nil)
	defer a.track(c, cancel)()
	err = h(srv, &authedStream{ServerStream: ss, ctx: ctx})
	if errors.Is(context.Cause(ctx), errRevoked) {
		callsRefused.WithLabelValues(refusedRevokedStream).Inc()
		return status.Error(codes.Unauthenticated, errRevoked.Error())
	}
	return err
}

// authedStream is a ServerStream whose context carries the caller.
type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authedStream) Context() context.Context { return s.ctx }

// requireAdmin refuses a caller without the admin role.
func requireAdmin(ctx context.Context, what string) error {
	if c := callerOf(ctx); !c.tenant.Admin {
		callsRefused.WithLabelValues(refusedNotAdmin).Inc()
		return status.Errorf(codes.PermissionDenied, "%s needs an admin token; tenant %q is not admin", what, c.tenant.Name)
	}
	return nil
}

// limitsFor returns the gateway's limits lowered by the caller's tenant's
// context limits.
func (g *Gateway) limitsFor(ctx context.Context) Limits {
	l := g.limits
	t := callerOf(ctx).tenant
	if t.ContextMaxBytes > 0 && t.ContextMaxBytes < l.Context.MaxTotalBytes {
		l.Context.MaxTotalBytes = t.ContextMaxBytes
	}
	if t.ContextMaxEntries > 0 && t.ContextMaxEntries < l.Context.MaxEntries {
		l.Context.MaxEntries = t.ContextMaxEntries
	}
	return l
}
