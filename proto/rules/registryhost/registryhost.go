// Package registryhost names registries the way registry credentials are
// keyed: the CLI looks credentials up in the docker config by these names
// and sends them (BuildSpec.registry_auth, by host); the gateway checks the
// names; the agent finds a build's credentials for the registry a pull or
// push reaches by the same name.
//
// The name is docker's: host[:port] in lower case, and "docker.io" for
// Docker Hub however it is spelt ("", "index.docker.io",
// "registry-1.docker.io", "https://index.docker.io/v1/").
package registryhost

import (
	"regexp"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules"
)

// DockerHub is the name Docker Hub's credentials go by.
const DockerHub = "docker.io"

const (
	// MaxLen bounds a registry host name, in bytes.
	MaxLen = 128
	// MaxCredentials bounds the registries one build carries credentials
	// for.
	MaxCredentials = 32
	// MaxCredentialBytes bounds one registry credential (the JSON the
	// client seals), before sealing.
	MaxCredentialBytes = 16 << 10
)

// Normalize returns the name credentials for a registry address go by:
// the host and port of address (a host, a host:port, or a URL as docker
// config keys hold), lower case, DockerHub for Docker Hub's names and for
// an empty address (an image reference without a registry is Docker
// Hub's).
func Normalize(address string) string {
	h := address
	if i := strings.Index(h, "://"); i >= 0 {
		h = h[i+3:]
	}
	if i := strings.IndexByte(h, '/'); i >= 0 {
		h = h[:i]
	}
	h = strings.ToLower(h)
	switch h {
	case "", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return DockerHub
	}
	return h
}

var hostRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:]+\])(:[0-9]{1,5})?$`)

// Valid checks a registry credential's key: a registry host as Normalize
// names it, with an optional port ("ghcr.io", "127.0.0.1:5000",
// "docker.io").
func Valid(host string) error {
	if len(host) > MaxLen || !hostRE.MatchString(host) {
		return rules.Invalidf("registry %.64q is not a registry host (like ghcr.io or 127.0.0.1:5000, lower case)", host)
	}
	return nil
}
