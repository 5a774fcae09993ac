package bus

import (
	"fmt"
	"net"
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
	opts := &server.Options{
		ServerName: "kilnd",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		// Build logs can be chatty; leave room for large context chunks.
		MaxPayload: 8 << 20,
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
