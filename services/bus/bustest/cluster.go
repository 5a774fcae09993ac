package bustest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// Cluster is a JetStream cluster of in-process nats-server nodes routed to
// each other over loopback, each with file storage synced on every write
// (sync_interval: always). A node can be stopped and started again on the
// same ports with the same store, and rejoins.
type Cluster struct {
	nodes []*Node
}

// Node is one server of a Cluster.
type Node struct {
	Name string
	opts bus.EmbeddedOptions

	mu  sync.Mutex
	srv *server.Server // nil while stopped
}

// StartCluster starts n nodes on free loopback ports and waits until the
// cluster has elected its JetStream metadata leader; every node stops when
// the test ends. Nothing is set up: call bus.Setup with the replicas wanted.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := freePorts(t, 2*n)
	routes := make([]string, n)
	for i := range n {
		routes[i] = fmt.Sprintf("127.0.0.1:%d", ports[n+i])
	}
	dir := t.TempDir()
	c := &Cluster{}
	for i := range n {
		name := fmt.Sprintf("nats-%d", i+1)
		var others []string
		for j, r := range routes {
			if j != i {
				others = append(others, r)
			}
		}
		c.nodes = append(c.nodes, &Node{Name: name, opts: bus.EmbeddedOptions{
			Name:       name,
			Listen:     fmt.Sprintf("127.0.0.1:%d", ports[i]),
			StoreDir:   filepath.Join(dir, name),
			SyncAlways: true,
			Cluster:    &bus.EmbeddedCluster{Name: "kiln-test", Listen: routes[i], Routes: others},
		}})
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.Stop()
		}
	})
	// Start them together: each node's JetStream waits for its peers.
	errs := make(chan error, n)
	for _, nd := range c.nodes {
		go func() { errs <- nd.Start() }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady(t)
	return c
}

// freePorts returns n distinct free loopback ports.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Nodes are the cluster's nodes in order (nats-1, nats-2, …).
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// URL is every node's client URL, comma-separated, as services are given it.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.nodes))
	for i, nd := range c.nodes {
		urls[i] = nd.URL()
	}
	return strings.Join(urls, ",")
}

// Conn connects to the whole cluster (URL) under name; the connection
// closes when the test ends. extra adds nats options.
func (c *Cluster) Conn(t testing.TB, name string, extra ...nats.Option) *bus.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := bus.Connect(ctx, c.URL(), name, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return conn
}

// WaitReady waits until one running node leads the JetStream metadata and
// sees every other running node online and current.
func (c *Cluster) WaitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		running, online := 0, -1
		for _, nd := range c.nodes {
			s := nd.Server()
			if s == nil {
				continue
			}
			running++
			if !s.JetStreamIsLeader() {
				continue
			}
			info, err := s.Jsz(&server.JSzOptions{})
			if err != nil || info.Meta == nil {
				continue
			}
			online = 0
			for _, p := range info.Meta.Replicas {
				if p.Current && !p.Offline {
					online++
				}
			}
		}
		if online == running-1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats cluster: %d of %d running nodes seen by a JetStream metadata leader within 60s", online+1, running)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with the deadline above
	}
}

// URL is the node's client URL.
func (n *Node) URL() string { return "nats://" + n.opts.Listen }

// Server is the running server, nil while the node is stopped.
func (n *Node) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Start starts the node on its ports with its store; a node that runs
// already is left alone.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return nil
	}
	s, err := bus.RunEmbedded(n.opts)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	n.srv = s
	return nil
}

// Stop shuts the node down and waits until it has; a stopped node is left
// alone.
func (n *Node) Stop() {
	n.mu.Lock()
	s := n.srv
	n.srv = nil
	n.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// WaitReplicas waits until every stream of the account (those bus.Setup
// makes: streams, buckets, the object store) is configured with replicas
// replicas, has a leader and all its followers current, and returns each
// stream's leader by stream name.
func WaitReplicas(t testing.TB, conn *bus.Conn, replicas int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		leaders, err := streamLeaders(t.Context(), conn.JS, replicas)
		if err == nil {
			return leaders
		}
		if time.Now().After(deadline) {
			t.Fatalf("streams not at %d current replicas within 60s: %v", replicas, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, with the deadline above
	}
}

func streamLeaders(ctx context.Context, js jetstream.JetStream, replicas int) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	leaders := map[string]string{}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return nil, err
		}
		info := s.CachedInfo()
		if info.Config.Replicas != replicas {
			return nil, fmt.Errorf("stream %s: configured with %d replicas", name, info.Config.Replicas)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return nil, fmt.Errorf("stream %s has no leader", name)
		}
		current := 0
		for _, p := range info.Cluster.Replicas {
			if p.Current && !p.Offline {
				current++
			}
		}
		if current != replicas-1 {
			return nil, fmt.Errorf("stream %s: %d of %d followers current", name, current, replicas-1)
		}
		leaders[name] = info.Cluster.Leader
	}
	if err := names.Err(); err != nil {
		return nil, err
	}
	if len(leaders) == 0 {
		return nil, fmt.Errorf("no streams")
	}
	return leaders, nil
}

// MoveLeaders makes node to the leader of every stream of the account
// (a leader stepdown with to preferred) and waits until it is.
func (c *Cluster) MoveLeaders(t testing.TB, conn *bus.Conn, to string) {
	t.Helper()
	replicas := c.replicas(t, conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		leaders := WaitReplicas(t, conn, replicas)
		moved := true
		for stream, leader := range leaders {
			if leader == to {
				continue
			}
			moved = false
			req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, to)
			// The answer comes before the new leader is elected; the
			// next round checks.
			_, _ = conn.NC.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(req), 5*time.Second)
		}
		if moved {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not move every stream's leadership to %s within 60s (%d replicas)", to, replicas)
		}
	}
}

// replicas is the replica count of KILN_REQUESTS.
func (c *Cluster) replicas(t testing.TB, conn *bus.Conn) int {
	t.Helper()
	s, err := conn.JS.Stream(t.Context(), bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config.Replicas
}
