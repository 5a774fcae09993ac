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
}

// MaxMessageBytes bounds one gRPC message the Client sends or receives: the
// gateway's default --context-max-manifest-bytes. WithDialOptions(
// grpc.WithDefaultCallOptions(...)) raises it for a gateway configured
// with a larger cap.
const MaxMessageBytes = 64 << 20

// Dial creates a Client for the gateway at addr ("host:port", or any gRPC
// target). It does not wait for the connection: an unreachable gateway shows
// up as codes.Unavailable on the first call. The connection uses TLS unless
// the gateway is on this machine (see WithTLSFiles, WithInsecurePlaintext).
func Dial(addr string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	dialOpts, err := o.transport(addr)
	if err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	// The largest reply is PutManifest's list of missing blobs: ~82 bytes
	// a digest, 8 MB for 100 000 entries (gRPC's default is 4 MB). A
	// manifest over the gateway's default --context-max-manifest-bytes
	// fails here, before it is sent.
	dialOpts = append(dialOpts, grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)))
	dialOpts = append(dialOpts, o.dialOptions...)
	conn, err := grpc.NewClient(addr, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dialling kiln gateway %s: %w", addr, err)
	}
	return &Client{
		conn:     conn,
		builds:   kilnv1.NewBuildServiceClient(conn),
		contexts: kilnv1.NewContextServiceClient(conn),
		opts:     o,
	}, nil
}

// Close closes the connection to the gateway.
func (c *Client) Close() error {
	return c.conn.Close()
}

// BuildService returns the raw BuildService client on the Client's connection.
func (c *Client) BuildService() kilnv1.BuildServiceClient { return c.builds }

// ContextService returns the raw ContextService client on the Client's connection.
func (c *Client) ContextService() kilnv1.ContextServiceClient { return c.contexts }

// ListAgents returns the farm's agents whose heartbeat is current.
func (c *Client) ListAgents(ctx context.Context) ([]*kilnv1.Agent, error) {
	resp, err := kilnv1.NewAgentServiceClient(c.conn).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	return resp.Agents, nil
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

// GetBuild returns the current record of a build.
func (c *Client) GetBuild(ctx context.Context, buildID string) (*kilnv1.Build, error) {
	resp, err := c.builds.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: buildID})
	if err != nil {
		return nil, fmt.Errorf("getting build %s: %w", buildID, err)
	}
	return resp.GetBuild(), nil
}

// CancelBuild asks the farm to stop a queued or running build and returns its
// record. The build ends with state CANCELLED once its agent has stopped.
func (c *Client) CancelBuild(ctx context.Context, buildID string) (*kilnv1.Build, error) {
	resp, err := c.builds.CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: buildID})
	if err != nil {
		return nil, fmt.Errorf("cancelling build %s: %w", buildID, err)
	}
	return resp.GetBuild(), nil
}

// ListBuilds returns one page of the tenant's builds, newest first, and the
// token of the next page ("" after the last). pageSize 0 means the server's
// default.
func (c *Client) ListBuilds(ctx context.Context, pageSize int32, pageToken string) ([]*kilnv1.Build, string, error) {
	resp, err := c.builds.ListBuilds(ctx, &kilnv1.ListBuildsRequest{PageSize: pageSize, PageToken: pageToken})
	if err != nil {
		return nil, "", fmt.Errorf("listing builds: %w", err)
	}
	return resp.GetBuilds(), resp.GetNextPageToken(), nil
}
