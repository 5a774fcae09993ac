package kiln

import (
	"context"
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc"
)

// Client talks to a kiln gateway: it uploads build contexts, starts builds
// and follows them. It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	builds   kilnv1.BuildServiceClient
	contexts kilnv1.ContextServiceClient
	opts     options
	// retry rides out outages of the gateways (see WithFailover).
	retry *retrier
}

// MaxMessageBytes bounds one gRPC message the Client sends or receives: the
// gateway's default --context-max-manifest-bytes. WithDialOptions(
// grpc.WithDefaultCallOptions(...)) raises it for a gateway configured
// with a larger cap.
const MaxMessageBytes = 64 << 20

// Dial creates a Client for the gateways at addr: "host:port", a list of
// them ("a:7700,b:7700"), or any gRPC target ("dns:///farm.example:7700",
// "unix:///run/kiln.sock"). A DNS name stands for every address it
// resolves to. The Client talks to one gateway at a time and fails over to
// another when it becomes unreachable (see WithFailover). Dial does not
// wait for a connection: unreachable gateways show up as
// codes.Unavailable on the first call. The connection uses TLS unless
// every gateway is on this machine (see WithTLSFiles,
// WithInsecurePlaintext); with TLS, each gateway of a list is verified as
// the host its entry names, an IP address included.
//
// ctx is checked before anything is done; the Client does not keep it.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	g, err := parseGateways(addr)
	if err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	dialOpts, err := o.transport(g)
	if err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	target, failover := failoverDialOptions(g)
	dialOpts = append(dialOpts, failover...)
	// The largest reply is PutManifest's list of missing blobs: ~82 bytes
	// a digest, 8 MB for 100 000 entries (gRPC's default is 4 MB). A
	// manifest over the gateway's default --context-max-manifest-bytes
	// fails here, before it is sent. gRPC keeps a request of up to that
	// size to retry it on another gateway (its default is 256 KiB).
	dialOpts = append(dialOpts, grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes),
		grpc.MaxRetryRPCBufferSize(MaxMessageBytes)))
	dialOpts = append(dialOpts, o.dialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	return &Client{
		conn:     conn,
		builds:   kilnv1.NewBuildServiceClient(conn),
		contexts: kilnv1.NewContextServiceClient(conn),
		opts:     o,
		retry:    &retrier{backoff: o.backoff, limit: o.outageLimit, gateways: g},
	}, nil
}

// CheckDial returns the error Dial would return for addr and opts
// because of what they say, before anything is read or dialled: a
// malformed address or gateway list (codes.InvalidArgument), plaintext
// asked for with TLS settings, or a token that would travel in plaintext
// to a gateway elsewhere (ErrPlaintextToken). nil does not mean that Dial
// will succeed: it still reads the TLS files.
func CheckDial(addr string, opts ...Option) error {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	g, err := parseGateways(addr)
	if err == nil {
		_, err = o.useTLS(g)
	}
	if err != nil {
		return fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	return nil
}

// Close closes the connection to the gateway.
func (c *Client) Close() error {
	return c.conn.Close()
}

// BuildService returns the raw BuildService client on the Client's connection.
func (c *Client) BuildService() kilnv1.BuildServiceClient { return c.builds }

// ContextService returns the raw ContextService client on the Client's connection.
func (c *Client) ContextService() kilnv1.ContextServiceClient { return c.contexts }

// Agents returns the farm's agents whose heartbeat is current.
func (c *Client) Agents(ctx context.Context) ([]*kilnv1.Agent, error) {
	resp, err := kilnv1.NewAgentServiceClient(c.conn).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	return resp.Agents, nil
}

// FarmInfo returns the versions of the farm's parts: the gateway that
// answered, the scheduler leader and every current agent with its engine.
func (c *Client) FarmInfo(ctx context.Context) (*kilnv1.GetFarmInfoResponse, error) {
	resp, err := kilnv1.NewAgentServiceClient(c.conn).GetFarmInfo(ctx, &kilnv1.GetFarmInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("getting the farm's versions: %w", err)
	}
	return resp, nil
}

// DrainAgent asks the farm to stop giving the named agent new builds, or
// with undrain to give it builds again, and returns the agent's record as
// it acknowledged (DRAINING after a drain). Builds it is running finish;
// the agent stays up. It needs an admin token.
func (c *Client) DrainAgent(ctx context.Context, name string, undrain bool) (*kilnv1.Agent, error) {
	resp, err := kilnv1.NewAgentServiceClient(c.conn).DrainAgent(ctx, &kilnv1.DrainAgentRequest{Name: name, Undrain: undrain})
	if err != nil {
		what := "draining"
		if undrain {
			what = "undraining"
		}
		return nil, fmt.Errorf("%s agent %s: %w", what, name, err)
	}
	return resp.GetAgent(), nil
}

// Get returns the current record of a build: codes.NotFound for one the
// farm does not know or that is another tenant's.
func (c *Client) Get(ctx context.Context, id string) (*kilnv1.Build, error) {
	resp, err := c.builds.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: id})
	if err != nil {
		return nil, fmt.Errorf("getting build %s: %w", id, err)
	}
	return resp.GetBuild(), nil
}

// Cancel asks the farm to stop a queued or running build and returns its
// record. The build ends CANCELLED once its agent has stopped; cancelling a
// build that has ended changes nothing.
func (c *Client) Cancel(ctx context.Context, id string) (*kilnv1.Build, error) {
	resp, err := c.builds.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: id})
	if err != nil {
		return nil, fmt.Errorf("cancelling build %s: %w", id, err)
	}
	return resp.GetBuild(), nil
}

// Retry queues a new build with the spec (sealed secrets and registry
// credentials included) and the context of build id, for the caller's
// tenant, and returns the new build's record: codes.NotFound for a build
// the farm does not know or that is another tenant's, FailedPrecondition
// when its context is no longer stored. idempotencyKey (made up when
// empty) makes the call safe to repeat: it is retried on another gateway
// when one fails with codes.Unavailable, and the same key for the same
// build returns the build the first call queued. Watch follows the new
// build.
func (c *Client) Retry(ctx context.Context, id, idempotencyKey string) (*kilnv1.Build, error) {
	if idempotencyKey == "" {
		key, err := NewIdempotencyKey()
		if err != nil {
			return nil, fmt.Errorf("retrying build %s: %w", id, err)
		}
		idempotencyKey = key
	}
	req := &kilnv1.RetryBuildRequest{BuildId: id, IdempotencyKey: idempotencyKey}
	var resp *kilnv1.RetryBuildResponse
	err := c.retry.retry(ctx, func() error {
		var err error
		resp, err = c.builds.RetryBuild(ctx, req)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("retrying build %s: %w", id, err)
	}
	return resp.GetBuild(), nil
}
