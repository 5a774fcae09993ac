package engine

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/docker/docker/client"
	"github.com/kilnbuild/kiln/proto/rules/platforms"
)

// Docker drives one Docker engine through the Engine API. It is safe for
// concurrent use: each method is one or a few independent API requests.
type Docker struct {
	c    *client.Client
	host string
}

// NewDocker prepares a client for the engine at host, in the form DOCKER_HOST
// takes ("unix:///var/run/docker.sock", "tcp://10.0.0.5:2376"). An empty host
// means the environment: DOCKER_HOST, else the default socket. TLS settings
// always come from the environment, as for the docker CLI: DOCKER_CERT_PATH
// names a directory with ca.pem, cert.pem and key.pem, and the engine's
// certificate is verified when DOCKER_TLS_VERIFY is non-empty.
//
// A tcp, http or https host that is not loopback is refused unless TLS is
// verified: the agent never talks to a remote engine that anyone on the path
// could impersonate. The API version is negotiated with the engine on the
// first request; NewDocker itself dials nothing.
func NewDocker(host string) (*Docker, error) {
	if host == "" {
		host = os.Getenv(client.EnvOverrideHost)
	}
	if host == "" {
		host = client.DefaultDockerHost
	}
	if err := checkHost(host, os.Getenv(client.EnvTLSVerify) != "", os.Getenv(client.EnvOverrideCertPath) != ""); err != nil {
		return nil, err
	}
	c, err := client.NewClientWithOpts(
		client.WithTLSClientConfigFromEnv(), // replaces the HTTP client: must come before WithHost
		client.WithHost(host),
		client.WithVersionFromEnv(),
		client.WithAPIVersionNegotiation(),
	)
	if err != nil {
		return nil, fmt.Errorf("docker engine %s: %w", host, err)
	}
	return &Docker{c: c, host: host}, nil
}

// checkHost refuses an engine address the agent must not use: a remote one
// without TLS verification, or a scheme the Engine API client cannot dial.
func checkHost(host string, tlsVerify, certPath bool) error {
	u, err := client.ParseHostURL(host)
	if err != nil {
		return fmt.Errorf("docker engine %q: %w", host, err)
	}
	switch u.Scheme {
	case "unix", "npipe":
		return nil
	case "tcp", "http", "https":
	default:
		return fmt.Errorf("docker engine %q: scheme %q is not supported (use unix:// or tcp:// with TLS)", host, u.Scheme)
	}
	if isLoopback(u.Hostname()) {
		return nil
	}
	switch {
	case tlsVerify && certPath:
		return nil
	case tlsVerify:
		return fmt.Errorf("docker engine %q is remote and DOCKER_TLS_VERIFY is set without DOCKER_CERT_PATH: point DOCKER_CERT_PATH at a directory with ca.pem, cert.pem and key.pem", host)
	default:
		return fmt.Errorf("docker engine %q is remote and TLS verification is off: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem); the agent refuses to talk to a remote engine without TLS verification", host)
	}
}

func isLoopback(hostname string) bool {
	if strings.EqualFold(hostname, "localhost") {
		return true
	}
	ip := net.ParseIP(hostname)
	return ip != nil && ip.IsLoopback()
}

// Host returns the engine address this client talks to.
func (d *Docker) Host() string { return d.host }

// Close releases the client's idle connections.
func (d *Docker) Close() error { return d.c.Close() }

// Info describes an engine as the agent advertises it.
type Info struct {
	ServerVersion string   // the engine's release, e.g. "20.10.24+dfsg1"
	APIVersion    string   // API version negotiated for this client, e.g. "1.41"
	MaxAPIVersion string   // newest API version the engine speaks
	StorageDriver string   // e.g. "overlay2"
	OS            string   // e.g. "linux"
	Arch          string   // e.g. "x86_64", as the engine spells it
	Builders      []string // "buildkit", "classic": what the engine builds with, preferred first
	Kind          string   // KindDocker or KindBuildKit
	Features      []string // Feature* constants: what the engine can do beyond building
	// Platforms are the platforms the engine builds natively, Emulated
	// those it builds under emulation (proto/rules/platforms' spelling).
	Platforms, Emulated []string
}

// Info asks the engine who it is. It is also the agent's liveness check: an
// error means the engine does not answer.
func (d *Docker) Info(ctx context.Context) (Info, error) {
	v, err := d.c.ServerVersion(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("docker engine %s: version: %w", d.host, err)
	}
	si, err := d.c.Info(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("docker engine %s: info: %w", d.host, err)
	}
	builders, err := d.Builders(ctx)
	if err != nil {
		return Info{}, err
	}
	native := platforms.Native(si.OSType, si.Architecture)
	return Info{
		// The engine's emulation is its host's binfmt_misc handlers: this
		// host's, for the local engine an agent normally drives.
		Platforms:     nonEmptyList(native),
		Emulated:      platforms.Emulated([]string{native}, BinfmtPlatforms(BinfmtDir)),
		Kind:          KindDocker,
		Features:      []string{FeatureCacheImport, FeatureCacheExportInline},
		Builders:      builders,
		ServerVersion: si.ServerVersion,
		APIVersion:    d.c.ClientVersion(),
		MaxAPIVersion: v.APIVersion,
		StorageDriver: si.Driver,
		OS:            si.OSType,
		Arch:          si.Architecture,
	}, nil
}
