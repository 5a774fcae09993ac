package agent

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/agent/localcas"
	"github.com/kilnbuild/kiln/agent/workdir"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/config"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/sealed"
	"github.com/kilnbuild/kiln/services/service"
)

// RunOptions are kiln-agent's flags.
type RunOptions struct {
	service.Common
	EngineOptions
	// ContextLimits must match the gateways' (kilnd passes its gateway's
	// limits in Config instead).
	ContextLimits ctxmanifest.Limits
}

// EngineOptions are the agent flags kilnd shares.
type EngineOptions struct {
	Name  string
	Slots int
	// Engine is the engine's address (openEngine); DockerHost is its
	// older name, --docker-host.
	Engine     string
	DockerHost string
	// EngineTLSCA, EngineTLSCert and EngineTLSKey are the files a tcp
	// buildkitd's TLS takes (engine.TLSConfig).
	EngineTLSCA, EngineTLSCert, EngineTLSKey string
	Labels                                   config.Labels
	Lease                                    time.Duration
	DrainTimeout                             time.Duration
	CacheDir                                 string
	CacheSize                                int64
	Builder                                  string
	WorkDir                                  string
	WorkDirSize                              int64
	// SecretsKeyFile holds the farm's secrets key (package sealed); ""
	// means builds with secrets are refused.
	SecretsKeyFile string
	FrontendAllow  string
	SkipRuncProbe  bool
	WarmCacheMode  string
}

// Flags registers the options on fs (each also read from KILN_<FLAG>).
func (o *RunOptions) Flags(fs *flag.FlagSet) {
	o.Common.Flags(fs, "127.0.0.1:7703", `{"http":…}`)
	o.EngineOptions.Flags(fs, DefaultDrainTimeout)
	o.ContextLimits.Flags(fs) // the same limits as the gateways'

}

// Flags registers the engine options on fs.
func (o *EngineOptions) Flags(fs *flag.FlagSet, drain time.Duration) {
	host, _ := os.Hostname()
	o.Labels = config.Labels{}
	fs.StringVar(&o.Name, "name", host, "agent name, unique in the farm")
	fs.IntVar(&o.Slots, "slots", DefaultSlots, "builds run at once")
	fs.StringVar(&o.Engine, "engine", "", "engine address: docker:///path.sock or docker://host:port, buildkit:///path.sock or buildkit://host:port, or unix:///path.sock or tcp://host:port to have the agent ask which kind it is (default $DOCKER_HOST, else the local Docker socket)")
	fs.StringVar(&o.DockerHost, "docker-host", "", "older name of --engine")
	fs.StringVar(&o.EngineTLSCA, "engine-tls-ca", "", "file with the CA certificate a tcp buildkitd's certificate is checked against (Docker engines: DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)")
	fs.StringVar(&o.EngineTLSCert, "engine-tls-cert", "", "file with the agent's client certificate for a tcp buildkitd")
	fs.StringVar(&o.EngineTLSKey, "engine-tls-key", "", "file with the key of --engine-tls-cert")
	fs.Var(o.Labels, "labels", "agent labels k=v,k=v a build may require")
	fs.DurationVar(&o.Lease, "lease", DefaultLease, "build lease (must match the scheduler's)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", drain, "on stop, how long in-flight builds may finish before they are handed back")
	// Not --cache-dir: its KILN_CACHE_DIR is the CLI's stat cache root.
	fs.StringVar(&o.CacheDir, "blob-cache-dir", "", "directory of the agent's local copy of context blobs, used by one process at a time (default <user cache dir>/kiln-cas/<name>)")
	fs.Int64Var(&o.CacheSize, "blob-cache-size", localcas.DefaultMaxBytes, "bytes the local blob cache may hold; least recently used blobs are evicted beyond")
	fs.StringVar(&o.Builder, "builder", BuilderAuto, "builders offered: auto (what the engine has, BuildKit first), buildkit or classic")
	fs.StringVar(&o.WorkDir, "work-dir", "", "directory of the per-lineage build contexts BuildKit syncs from, used by one process at a time (default <blob-cache-dir>-work)")
	fs.Int64Var(&o.WorkDirSize, "work-dir-size", workdir.DefaultMaxBytes, "bytes the work directories may hold; least recently used lineages are deleted beyond")
	fs.StringVar(&o.SecretsKeyFile, "secrets-key-file", "", "file with the farm's secrets key, to open build secrets (kilnd: <data-dir>/secrets.key)")
	fs.StringVar(&o.FrontendAllow, "frontend-allow", "", "comma-separated Dockerfile frontend images (# syntax=, BUILDKIT_SYNTAX) the engine may pull, as glob patterns; none by default")
	fs.StringVar(&o.WarmCacheMode, "warm-cache-mode", "max", "mode of the automatic warm start's registry cache export on engines that have one: max (every stage's layers) or min (the final image's)")
	fs.BoolVar(&o.SkipRuncProbe, "skip-runc-probe", false, "do not probe the engine's runc for CVE-2024-21626 (only for engines whose default runtime is not runc, e.g. gVisor or Kata, which the probe cannot read)")
}

// NewAgent connects to the engine and returns an agent bound to conn, and a
// func that closes the engine connection and the agent's blob cache.
func (o *EngineOptions) NewAgent(ctx context.Context, conn *bus.Conn, cfg Config) (*Agent, func(), error) {
	if o.Engine != "" && o.DockerHost != "" && o.Engine != o.DockerHost {
		return nil, nil, fmt.Errorf("--engine %s and --docker-host %s disagree: --docker-host is --engine's older name, give one", o.Engine, o.DockerHost)
	}
	eng, err := o.openEngine(ctx)
	if err != nil {
		return nil, nil, err
	}
	cfg.Name, cfg.Slots, cfg.Labels, cfg.Engine, cfg.Conn = o.Name, o.Slots, o.Labels, eng, conn
	cfg.Lease, cfg.DrainTimeout = o.Lease, o.DrainTimeout
	cfg.CacheDir, cfg.CacheBytes = o.CacheDir, o.CacheSize
	cfg.Builder, cfg.WorkDir, cfg.WorkDirBytes = o.Builder, o.WorkDir, o.WorkDirSize
	cfg.SkipRuncProbe, cfg.WarmCacheMode = o.SkipRuncProbe, o.WarmCacheMode
	for _, f := range strings.Split(o.FrontendAllow, ",") {
		if f = strings.TrimSpace(f); f != "" {
			cfg.FrontendAllow = append(cfg.FrontendAllow, f)
		}
	}
	if o.SecretsKeyFile != "" && cfg.SecretsKey == nil {
		if cfg.SecretsKey, err = sealed.LoadPrivateKey(o.SecretsKeyFile); err != nil {
			eng.Close()
			return nil, nil, err
		}
	}
	a, err := New(ctx, cfg)
	if err != nil {
		eng.Close()
		return nil, nil, err
	}
	return a, func() { a.Close(); eng.Close() }, nil
}

// Run connects to NATS and the engine and runs builds until ctx ends.
func Run(ctx context.Context, o RunOptions) error {
	// An agent sets nothing up (its credential may not) and takes replies
	// on its own inbox (its credential allows no other).
	log, conn, err := o.Common.StartClient(ctx, "agent", nats.CustomInboxPrefix(bus.AgentInboxPrefix(o.Name)))
	if err != nil {
		return err
	}
	defer conn.Close()
	a, closeEngine, err := o.NewAgent(ctx, conn, Config{Logger: log, ContextLimits: o.ContextLimits})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer closeEngine()
	hs, err := httpserver.Listen(o.HTTPListen,
		httpserver.Check{Name: "nats", Check: conn.Ready},
		httpserver.Check{Name: "engine", Check: a.Ready})
	if err != nil {
		return err
	}
	var eg errgroup.Group
	hctx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	eg.Go(func() error { return hs.Serve(hctx) })
	a.Announce(ctx)
	if err := readyfile.Write(o.ReadyFile, map[string]string{"http": hs.Addr()}); err != nil {
		stopHTTP()
		return err
	}
	log.Info("agent running", "name", o.Name, "slots", o.Slots, "http", hs.Addr())
	err = a.Run(ctx)
	stopHTTP()
	if herr := eg.Wait(); err == nil {
		err = herr
	}
	return err
}
