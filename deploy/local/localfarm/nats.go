package localfarm

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
)

// installNATSServer installs the pinned nats-server into <repo>/bin/tools.
func installNATSServer(ctx context.Context, repo string) error {
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/nats-server/v2@"+NATSServerVersion)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(repo, "bin", "tools"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("localfarm: go install nats-server %s: %w\n%s", NATSServerVersion, err, out)
	}
	return nil
}

// startNATS writes the nodes' configurations (one cluster over loopback
// routes, JetStream on file storage with fsync on every write, the role
// nkeys of f.seeds), starts every node, then waits until each reports
// healthy — a clustered node is only healthy once the others are up.
func (f *Farm) startNATS(ctx context.Context) error {
	n := f.opts.NATS
	ports, err := freePorts(3 * n)
	if err != nil {
		return err
	}
	dir := filepath.Join(f.dir, "nats")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("localfarm: %w", err)
	}
	if !f.opts.NoAuth {
		auth, err := bus.AuthorizationConfig(f.seeds.Identities)
		if err != nil {
			return fmt.Errorf("localfarm: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(auth), 0o600); err != nil {
			return fmt.Errorf("localfarm: %w", err)
		}
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3*i+1]))
	}
	sync := f.opts.NATSSync
	if sync == "" {
		sync = "always"
	}
	var nodes []*proc
	for i := range n {
		name := fmt.Sprintf("nats-%d", i+1)
		client, cluster, mon := ports[3*i], ports[3*i+1], ports[3*i+2]
		var b strings.Builder
		fmt.Fprintf(&b, "# Written by localfarm.\nserver_name: %q\nlisten: \"127.0.0.1:%d\"\nhttp: \"127.0.0.1:%d\"\n", name, client, mon)
		fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n  sync_interval: %s\n}\n", filepath.Join(dir, name), sync)
		if n > 1 {
			fmt.Fprintf(&b, "cluster {\n  name: \"kiln\"\n  listen: \"127.0.0.1:%d\"\n  routes: [\n", cluster)
			for _, r := range routes {
				fmt.Fprintf(&b, "    %q\n", r)
			}
			b.WriteString("  ]\n}\n")
		}
		if !f.opts.NoAuth {
			b.WriteString("include \"auth.conf\"\n")
		}
		conf := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("localfarm: %w", err)
		}
		monAddr := fmt.Sprintf("127.0.0.1:%d", mon)
		p := &proc{
			role: RoleNATS, name: name,
			addr: fmt.Sprintf("nats://127.0.0.1:%d", client), http: monAddr,
			path: f.opts.NATSServer, args: []string{"-c", conf},
			logPath: f.logPath(name), logs: f.logs,
			ready: func(ctx context.Context, exited <-chan struct{}) error {
				return poll(ctx, exited, func(ctx context.Context) error {
					return httpOK(ctx, "http://"+monAddr+"/healthz")
				})
			},
		}
		f.add(p)
		if err := p.launch(); err != nil {
			return err
		}
		nodes = append(nodes, p)
	}
	for _, p := range nodes {
		if err := p.waitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (f *Farm) add(p *proc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.procs = append(f.procs, p)
}

func (f *Farm) logPath(name string) string {
	return filepath.Join(f.dir, "logs", name+".log")
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// httpOK GETs url and wants a 200.
func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
