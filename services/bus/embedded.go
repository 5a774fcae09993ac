package bus

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure the in-process NATS server kilnd runs.
type EmbeddedOptions struct {
	// Listen is host:port for clients; port 0 picks a free port.
	Listen string
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// Identities are the only clients the server accepts, each with its
	// role's permissions (Permissions). None: anyone may connect and do
	// anything — for tests and a trusted single user only.
	Identities []Identity

	// Name is the server's name, unique in a cluster; "" is "kilnd".
	Name string
	// Cluster, when set, makes the server one node of a JetStream
	// cluster (streams with more than one replica).
	Cluster *EmbeddedCluster
	// SyncAlways makes JetStream fsync every write before it acknowledges
	// it (nats-server's sync_interval: always). Without it the server
	// syncs every two minutes and, in a cluster, a write acknowledged by a
	// majority that then loses power together is lost (deploy/nats/README.md).
	SyncAlways bool
}

// EmbeddedCluster joins an embedded server to a cluster over routes.
type EmbeddedCluster struct {
	// Name is the cluster's name, the same on every node.
	Name string
	// Listen is host:port for routes from the other nodes; a fixed port,
	// so that a restarted node is found where it was.
	Listen string
	// Routes are the other nodes' route addresses (host:port).
	Routes []string
}

// RunEmbedded starts the nats-server library in-process with JetStream and
// waits until it accepts connections. The caller owns Shutdown.
func RunEmbedded(o EmbeddedOptions) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	name := o.Name
	if name == "" {
		name = "kilnd"
	}
	opts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		// Build logs can be chatty; leave room for large context chunks.
		MaxPayload: 8 << 20,
		SyncAlways: o.SyncAlways,
	}
	if c := o.Cluster; c != nil {
		if err := clusterOptions(opts, c); err != nil {
			return nil, err
		}
	}
	if len(o.Identities) > 0 {
		if opts.Nkeys, err = NkeyUsers(o.Identities); err != nil {
			return nil, err
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("configure embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats did not become ready on %s", o.Listen)
	}
	return s, nil
}

func clusterOptions(opts *server.Options, c *EmbeddedCluster) error {
	host, portStr, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("nats cluster listen address %q: %w", c.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return fmt.Errorf("nats cluster listen port %q: a fixed port is needed", portStr)
	}
	opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: port}
	for _, r := range c.Routes {
		u, err := url.Parse("nats-route://" + r)
		if err != nil {
			return fmt.Errorf("nats route %q: %w", r, err)
		}
		opts.Routes = append(opts.Routes, u)
	}
	return nil
}
