package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/registryhost"
	"github.com/kilnbuild/kiln/sdk/internal/reference"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// Registry credentials travel with the build, as buildx hands the builder
// the client's `docker login` credentials: the CLI looks up, in the docker
// CLI's config, the registries the build pushes to (its tags, with --push)
// and pulls its base images from (its Dockerfile's FROM lines), and the
// SDK seals what it finds to the farm's key. The agent uses them before
// its own host's credentials.

// dockerHubServer is the name Docker Hub's credentials go by in docker
// config files and credential helpers.
const dockerHubServer = "https://index.docker.io/v1/"

// registryHosts lists the registries a build needs credentials for, sorted:
// those of its tags when it pushes, those of its --cache-from and
// --cache-to refs (cacheopt.Hosts), and those its Dockerfile's FROM lines
// name (stage names, scratch and references built from ARGs are skipped).
func registryHosts(spec *kilnv1.BuildSpec, dockerfile []byte) []string {
	set := map[string]bool{}
	for _, h := range cacheopt.Hosts(spec.GetCacheFrom(), spec.GetCacheTo()) {
		set[h] = true
	}
	if spec.GetPush() {
		for _, t := range spec.GetTags() {
			if r, err := reference.Parse(t); err == nil {
				set[registryhost.Normalize(r.Domain)] = true
			}
		}
	}
	stages := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || !strings.EqualFold(fields[0], "FROM") {
			continue
		}
		args := slices.DeleteFunc(fields[1:], func(f string) bool { return strings.HasPrefix(f, "--") })
		if len(args) == 0 {
			continue
		}
		name, _, _ := strings.Cut(args[0], "@")
		if !strings.Contains(name, "$") && !strings.EqualFold(name, "scratch") && !stages[strings.ToLower(name)] {
			if r, err := reference.Parse(name); err == nil {
				set[registryhost.Normalize(r.Domain)] = true
			}
		}
		if len(args) >= 3 && strings.EqualFold(args[1], "AS") { // later FROMs may name this stage
			stages[strings.ToLower(args[2])] = true
		}
	}
	hosts := make([]string, 0, len(set))
	for h := range set {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	return hosts
}

// dockerConfig is the part of the docker CLI's config.json that holds
// credentials.
type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

// credentialHelper runs docker-credential-<name> get for server and returns
// its output.
type credentialHelper func(ctx context.Context, name, server string) ([]byte, error)

func runCredentialHelper(ctx context.Context, name, server string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "docker-credential-"+name, "get")
	cmd.Stdin = strings.NewReader(server)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// The helper's stdout names why ("credentials not found in native
		// keychain"); it never holds a secret when the helper fails.
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)+" "+stderr.String()))
	}
	return out, nil
}

// errNoCredentials: the helper has nothing for the registry.
var errNoCredentials = errors.New("no credentials")

// lookupRegistryCredentials finds the credentials the docker CLI would use
// for each host, in DOCKER_CONFIG (else ~/.docker)/config.json: a
// credential helper named for the host (credHelpers), else the credential
// store (credsStore), else the file's auths. Hosts without any are left
// out; no config file means no credentials. Errors name the file or the
// helper, never a credential.
func lookupRegistryCredentials(ctx context.Context, hosts []string, lookupEnv func(string) (string, bool), helper credentialHelper) (map[string]kiln.RegistryCredential, error) {
	if len(hosts) == 0 {
		return nil, nil
	}
	dir, ok := lookupEnv("DOCKER_CONFIG")
	if !ok || dir == "" {
		home, ok := lookupEnv("HOME")
		if !ok || home == "" {
			return nil, nil
		}
		dir = filepath.Join(home, ".docker")
	}
	file := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading registry credentials: %w", err)
	}
	var cfg dockerConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("reading registry credentials: %s is not a docker config file: %v", file, err)
	}
	auths := map[string]kiln.RegistryCredential{}
	for key, a := range cfg.Auths {
		c := kiln.RegistryCredential{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			user, pass, ok := strings.Cut(string(dec), ":")
			if err != nil || !ok {
				return nil, fmt.Errorf("reading registry credentials: the auth entry for %s in %s does not decode to user:password", key, file)
			}
			c.Username, c.Password = user, pass
		}
		if c != (kiln.RegistryCredential{}) {
			auths[registryhost.Normalize(key)] = c
		}
	}
	out := map[string]kiln.RegistryCredential{}
	for _, host := range hosts {
		name := cfg.CredHelpers[host]
		if name == "" && host == registryhost.DockerHub {
			name = cfg.CredHelpers[dockerHubServer]
		}
		if name == "" {
			name = cfg.CredsStore
		}
		if name == "" {
			if c, ok := auths[host]; ok {
				out[host] = c
			}
			continue
		}
		c, err := fromHelper(ctx, helper, name, host)
		if errors.Is(err, errNoCredentials) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading registry credentials for %s with docker-credential-%s (from %s): %w", host, name, file, err)
		}
		out[host] = c
	}
	return out, nil
}

// fromHelper asks a docker credential helper for host's credentials.
func fromHelper(ctx context.Context, helper credentialHelper, name, host string) (kiln.RegistryCredential, error) {
	server := host
	if host == registryhost.DockerHub {
		server = dockerHubServer
	}
	out, err := helper(ctx, name, server)
	if err != nil {
		// A helper that is not installed has nothing to give either (a
		// config copied from a desktop names docker-credential-desktop):
		// the build goes on without, as BuildKit's own lookup does.
		if strings.Contains(err.Error(), "credentials not found") || errors.Is(err, exec.ErrNotFound) {
			return kiln.RegistryCredential{}, errNoCredentials
		}
		return kiln.RegistryCredential{}, err
	}
	var r struct{ Username, Secret string }
	if err := json.Unmarshal(out, &r); err != nil {
		return kiln.RegistryCredential{}, errors.New("its answer is not the JSON the helper protocol defines")
	}
	if r.Username == "" && r.Secret == "" {
		return kiln.RegistryCredential{}, errNoCredentials
	}
	if r.Username == "<token>" {
		return kiln.RegistryCredential{IdentityToken: r.Secret}, nil
	}
	return kiln.RegistryCredential{Username: r.Username, Password: r.Secret}, nil
}
