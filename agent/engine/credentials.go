package engine

import (
	"context"

	clitypes "github.com/docker/cli/cli/config/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/moby/buildkit/session/auth/authprovider"

	"github.com/kilnbuild/kiln/proto/rules/registryhost"
)

// Credentials are registry credentials a build brought with it (sealed by
// its client, opened by the agent), by registry host as docker config
// names it: "ghcr.io", "127.0.0.1:5000", "docker.io" for Docker Hub. They
// come before this host's docker config, for pulls and pushes alike.
type Credentials map[string]registry.AuthConfig

// lookup returns the build's credentials for a registry address.
func (c Credentials) lookup(address string) (registry.AuthConfig, bool) {
	ac, ok := c[registryhost.Normalize(address)]
	return ac, ok
}

// authProvider serves BuildKit's requests for registry credentials: the
// build's own first, then this host's docker config.
func (c Credentials) authProvider() authprovider.AuthConfigProvider {
	fallback := authprovider.LoadAuthConfig(dockerConfig())
	return func(ctx context.Context, host string, scope []string, check authprovider.ExpireCachedAuthCheck) (clitypes.AuthConfig, error) {
		if ac, ok := c.lookup(host); ok {
			return clitypes.AuthConfig{
				Username: ac.Username, Password: ac.Password, ServerAddress: host,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
			}, nil
		}
		return fallback(ctx, host, scope, check)
	}
}

// classicAuthConfigs is what the classic builder pulls base images with,
// keyed as the docker CLI keys them: this host's docker config, with the
// build's credentials over it.
func (c Credentials) classicAuthConfigs() map[string]registry.AuthConfig {
	out := map[string]registry.AuthConfig{}
	if all, err := dockerConfig().GetAllCredentials(); err == nil {
		for key, ac := range all {
			out[key] = fromConfig(ac)
		}
	}
	for host, ac := range c {
		key := host
		if host == registryhost.DockerHub {
			key = dockerHubAuthKey
		}
		ac.ServerAddress = key
		out[key] = ac
	}
	return out
}

// fromConfig converts a docker config entry to what the Engine API takes.
func fromConfig(ac clitypes.AuthConfig) registry.AuthConfig {
	return registry.AuthConfig{
		Username: ac.Username, Password: ac.Password, Auth: ac.Auth, ServerAddress: ac.ServerAddress,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
	}
}
