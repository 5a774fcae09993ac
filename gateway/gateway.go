// Package gateway is kiln's public face: the gRPC BuildService,
// ContextService and AgentService. It validates requests, stores contexts in
// the CAS, writes build records and hands builds to the scheduler over NATS,
// and relays each build's event log to watchers.
package gateway

import (
	"context"
	"flag"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
	"github.com/kilnbuild/kiln/services/lru"
	"github.com/kilnbuild/kiln/services/sealed"
	"github.com/kilnbuild/kiln/services/telemetry"
	"github.com/kilnbuild/kiln/services/tenants"
)

// Config wires a Gateway.
type Config struct {
	Conn   *bus.Conn
	Logger *slog.Logger
	// Limits bound what one request may ask for.
	Limits Limits
	// SecretsKey is the farm's public key for build secrets, which
	// GetSecretsKey hands to clients; nil when the farm has none, and then
	// builds with secrets are refused.
	SecretsKey *sealed.PublicKey
	// Tenants are the farm's tenants and their token hashes; nil runs the
	// gateway in single-tenant local mode (one tenant, LocalTenant, no
	// token needed), for a gateway that listens on loopback only.
	Tenants *tenants.Set
}

// Limits bound requests.
type Limits struct {
	// Context bounds one build context (total bytes, entries, path length);
	// Context.MaxTotalBytes also bounds one blob and one upload stream.
	Context ctxmanifest.Limits
	// Manifests bound one manifest and the memory manifests being decoded
	// hold at once (manifest_memory.go).
	Manifests ManifestLimits
	// CAS bounds what tenants keep in KILN_CAS and for how long
	// (casquota.go).
	CAS CASLimits
	// CacheRegistry is the farm's automatic warm start prefix
	// (--cache-registry, cache.go): not a limit, but a setting kilnd shares
	// with kiln-gateway through these flags. A tenant's cache_registry wins.
	CacheRegistry string
}

// DefaultLimits apply when Config.Limits is zero.
var DefaultLimits = Limits{Context: ctxmanifest.DefaultLimits, Manifests: DefaultManifestLimits, CAS: DefaultCASLimits}

// Flags registers the limits as flags (each also read from KILN_<FLAG>).
func (l *Limits) Flags(fs *flag.FlagSet) {
	l.Context.Flags(fs)
	l.Manifests.Flags(fs)
	l.CAS.Flags(fs)
	cacheRegistryFlag(fs, &l.CacheRegistry)
}

// Gateway implements the public gRPC services.
type Gateway struct {
	kilnv1.UnimplementedBuildServiceServer
	kilnv1.UnimplementedContextServiceServer
	kilnv1.UnimplementedAgentServiceServer

	conn     *bus.Conn
	log      *slog.Logger
	builds   *buildstore.Store
	blobs    *cas.Store
	checked  *lru.Cache[checkedKey, []byte] // see checkContext
	idem     jetstream.KeyValue
	inflight jetstream.KeyValue
	agents   jetstream.KeyValue
	leader   jetstream.KeyValue // KILN_LEADER: the scheduler's version (GetFarmInfo)
	limits   Limits
	health   *health.Server
	// auth authenticates every RPC but health and reflection.
	auth authenticator
	// secretsKey is Config.SecretsKey; secretsKeyID its sealed.KeyID.
	secretsKey   *sealed.PublicKey
	secretsKeyID string
	// usage and manifests: CAS quotas (casquota.go) and the manifest
	// memory budget (manifest_memory.go).
	usage     *cas.Usage
	manifests *manifestGate
	// nonces holds the seal nonces accepted (see claimSealNonce).
	nonces jetstream.KeyValue
	// abandoned are builds whose start failed with the NATS cluster
	// unavailable, to remove if they were stored after all (abandon.go).
	abandoned abandoned
}

var (
	_ kilnv1.BuildServiceServer   = (*Gateway)(nil)
	_ kilnv1.ContextServiceServer = (*Gateway)(nil)
	_ kilnv1.AgentServiceServer   = (*Gateway)(nil)
)

// New binds a Gateway to the farm's NATS resources (bus.Setup must have run).
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	builds, err := buildstore.Open(ctx, cfg.Conn.JS)
	if err != nil {
		return nil, err
	}
	blobs, err := cas.Open(ctx, cfg.Conn.JS, cas.RememberFor(cfg.Limits.CAS.rememberFor()))
	if err != nil {
		return nil, err
	}
	usage, err := cas.OpenUsage(ctx, cfg.Conn.JS)
	if err != nil {
		return nil, err
	}
	idem, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketIdempotency)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketIdempotency, err)
	}
	inflight, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketInflight)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketInflight, err)
	}
	agents, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketAgents, err)
	}
	leader, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketLeader)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketLeader, err)
	}
	nonces, err := cfg.Conn.JS.KeyValue(ctx, bus.BucketSealNonces)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketSealNonces, err)
	}
	if err := cacheopt.ValidPrefix(cfg.Limits.CacheRegistry); err != nil {
		return nil, err
	}
	if l := cfg.Limits; l == (Limits{CacheRegistry: l.CacheRegistry}) {
		cfg.Limits = DefaultLimits
		cfg.Limits.CacheRegistry = l.CacheRegistry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Gateway{
		conn: cfg.Conn, log: cfg.Logger, builds: builds, blobs: blobs, checked: lru.New[checkedKey, []byte](checkedContextBytes),
		idem: idem, inflight: inflight, agents: agents, leader: leader, limits: cfg.Limits, health: health.NewServer(),
		nonces: nonces, abandoned: newAbandoned(),
	}
	g.usage, g.manifests = usage, newManifestGate(cfg.Limits)
	if cfg.SecretsKey != nil {
		pub := *cfg.SecretsKey
		g.secretsKey, g.secretsKeyID = &pub, sealed.KeyID(pub)
	}
	g.auth.log = cfg.Logger
	if cfg.Tenants != nil {
		g.auth.set.Store(cfg.Tenants)
	}
	return g, nil
}

// NewGRPCServer returns a gRPC server with kiln's services, grpc.health.v1
// and server reflection registered, calls traced (health checks excepted),
// and errors turned into status codes.
func (g *Gateway) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	opts = append(opts, telemetry.ServerOptions()...)
	opts = append(opts,
		// The largest legitimate request (manifest_memory.go): a manifest
		// of 100 000 entries is several MB, so gRPC's 4 MB default is too
		// small, and our own limits speak first with clear messages.
		grpc.MaxRecvMsgSize(g.limits.maxRecvMsgSize()),
		grpc.ChainUnaryInterceptor(g.auth.unary, unaryStatus),
		grpc.ChainStreamInterceptor(g.auth.stream, streamStatus),
	)
	s := grpc.NewServer(opts...)
	kilnv1.RegisterBuildServiceServer(s, g)
	s.RegisterService(g.manifests.contextServiceDesc(), g) // PutManifest within --manifest-memory
	kilnv1.RegisterAgentServiceServer(s, g)
	healthpb.RegisterHealthServer(s, g.health)
	reflection.Register(s)
	for _, svc := range healthServices {
		g.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	return s
}

// ReloadTenants puts a new tenants file in force: tokens it no longer
// holds are refused from now on, and their open streams (WatchBuild,
// UploadBlobs) end with Unauthenticated. It returns how many streams it
// ended. A gateway in local mode becomes multi-tenant.
func (g *Gateway) ReloadTenants(set *tenants.Set) int { return g.auth.reload(set) }

// Shutdown marks the services NOT_SERVING so load balancers move away.
func (g *Gateway) Shutdown() { g.health.Shutdown() }

// Ready reports whether the gateway can serve: NATS is connected.
func (g *Gateway) Ready(ctx context.Context) error { return g.conn.Ready(ctx) }
