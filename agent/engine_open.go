package agent

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/docker/docker/client"

	"github.com/kilnbuild/kiln/agent/engine"
)

// openedEngine is the engine an agent drives, and how to let it go.
type openedEngine interface {
	Engine
	Close() error
}

var _ openedEngine = (*engine.BuildKitd)(nil)

// openEngine connects to the engine o names (--engine, else its alias
// --docker-host): "docker://…" and "buildkit://…" say the kind; a plain
// "unix://…" or "tcp://…" is asked which it is (engine.Probe), except a
// tcp address with TLS, which is the kind whose TLS settings are given
// (--engine-tls-* for BuildKit, DOCKER_TLS_VERIFY for Docker). No address
// means the Docker engine of DOCKER_HOST, else the local socket. A Docker
// engine takes its TLS settings from the environment as the docker CLI
// does; a buildkitd from --engine-tls-ca, -cert and -key.
func (o *EngineOptions) openEngine(ctx context.Context) (openedEngine, error) {
	addr := o.Engine
	if addr == "" {
		addr = o.DockerHost
	}
	if addr == "" {
		return engine.NewDocker("")
	}
	kind, parsed, err := engine.ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	tls := engine.TLSConfig{CACert: o.EngineTLSCA, Cert: o.EngineTLSCert, Key: o.EngineTLSKey}
	if kind == "" {
		switch {
		case strings.HasPrefix(parsed, "tcp://") && tls != (engine.TLSConfig{}):
			kind = engine.KindBuildKit
		case strings.HasPrefix(parsed, "tcp://") && os.Getenv(client.EnvTLSVerify) != "":
			kind = engine.KindDocker
		default:
			if kind, err = engine.Probe(ctx, parsed); err != nil {
				return nil, fmt.Errorf("--engine %s: %w", addr, err)
			}
		}
	}
	switch kind {
	case engine.KindDocker:
		if tls != (engine.TLSConfig{}) {
			return nil, fmt.Errorf("--engine %s is a Docker engine, which takes its TLS settings from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, not --engine-tls-*", addr)
		}
		return engine.NewDocker(parsed)
	case engine.KindBuildKit:
		return engine.NewBuildKitd(ctx, parsed, tls)
	}
	return nil, fmt.Errorf("--engine %s: unknown engine kind %q", addr, kind)
}
