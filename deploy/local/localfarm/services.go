package localfarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/kilnbuild/kiln/services/bus"
)

// startServices starts the gateways, schedulers and agents. The first
// gateway (else the first scheduler) starts alone — it sets up the
// streams and buckets at the farm's replica count — then the rest start
// together and are waited on.
func (f *Farm) startServices(ctx context.Context) error {
	count := 2*f.opts.Gateways + f.opts.Schedulers + f.opts.Agents
	ports, err := freePorts(count)
	if err != nil {
		return err
	}
	next := func() string {
		p := ports[0]
		ports = ports[1:]
		return "127.0.0.1:" + strconv.Itoa(p)
	}
	var all []*proc
	for i := 1; i <= f.opts.Gateways; i++ {
		grpcAddr, httpAddr := next(), next()
		p := f.service(RoleGateway, i, "kiln-gateway", httpAddr, bus.RoleGateway, "",
			append([]string{"--listen", grpcAddr}, f.opts.GatewayArgs...))
		p.addr = grpcAddr
		all = append(all, p)
	}
	for i := 1; i <= f.opts.Schedulers; i++ {
		all = append(all, f.service(RoleScheduler, i, "kiln-scheduler", next(), bus.RoleScheduler, "", f.opts.SchedulerArgs))
	}
	engines := f.byRole(RoleEngine)
	for i := 1; i <= f.opts.Agents; i++ {
		name := agentName(i)
		args := []string{
			"--name", name,
			"--slots", strconv.Itoa(f.opts.AgentSlots),
			"--docker-host", engines[i-1].addr,
			"--blob-cache-dir", filepath.Join(f.dir, fmt.Sprintf("a%d", i), "blobs"),
		}
		all = append(all, f.service(RoleAgent, i, "kiln-agent", next(), bus.RoleAgent, name, append(args, f.opts.AgentArgs...)))
	}
	rest := all
	if len(all) > 0 && all[0].role != RoleAgent {
		f.add(all[0])
		if err := all[0].start(ctx); err != nil {
			return err
		}
		rest = all[1:]
	}
	for _, p := range rest {
		f.add(p)
		if err := p.launch(); err != nil {
			return err
		}
	}
	for _, p := range rest {
		if err := p.waitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// service makes a kiln service process: the common flags (every NATS
// URL, the replica count, its role's nkey, a fixed HTTP address and a
// ready file) and extra.
func (f *Farm) service(role string, i int, binary, httpAddr string, natsRole bus.Role, agent string, extra []string) *proc {
	name := fmt.Sprintf("%s-%d", role, i)
	readyFile := filepath.Join(f.dir, "run", name+".json")
	args := []string{
		"--nats-url", f.NATSURL(),
		"--nats-replicas", strconv.Itoa(f.opts.Replicas),
		"--http-listen", httpAddr,
		"--ready-file", readyFile,
	}
	if !f.opts.NoAuth {
		args = append(args, "--nats-nkey-file", f.seeds.File(natsRole, agent))
	}
	return &proc{
		role: role, name: name, http: httpAddr,
		path:    filepath.Join(f.opts.Bin, binary),
		args:    append(args, extra...),
		logPath: f.logPath(name), logs: f.logs,
		prepare: func() error {
			if err := os.MkdirAll(filepath.Dir(readyFile), 0o755); err != nil {
				return err
			}
			if err := os.Remove(readyFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		},
		ready: func(ctx context.Context, exited <-chan struct{}) error {
			return poll(ctx, exited, func(ctx context.Context) error {
				data, err := os.ReadFile(readyFile)
				if err != nil {
					return fmt.Errorf("no ready file yet: %w", err)
				}
				var addrs map[string]string
				if err := json.Unmarshal(data, &addrs); err != nil {
					return fmt.Errorf("ready file %s: %w", readyFile, err)
				}
				if addrs["http"] != httpAddr {
					return fmt.Errorf("ready file says http %q, want %q", addrs["http"], httpAddr)
				}
				return httpOK(ctx, "http://"+httpAddr+"/readyz")
			})
		},
	}
}
