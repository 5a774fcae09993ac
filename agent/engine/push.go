package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/pkg/jsonmessage"
)

// dockerHubAuthKey is the key Docker's config files file Docker Hub's
// credentials under.
const dockerHubAuthKey = "https://index.docker.io/v1/"

// Tag points tag at the image imageID, as docker tag does.
func (d *Docker) Tag(ctx context.Context, imageID, tag string) error {
	if err := d.c.ImageTag(ctx, imageID, tag); err != nil {
		return fmt.Errorf("tag %s as %s: %w", imageID, tag, err)
	}
	return nil
}

// Push pushes one tag, e.g. "127.0.0.1:5000/team/app:1", to its registry and
// returns the manifest digest and size the registry stored. Credentials for
// the registry are the build's own (creds) if it brought some for that
// registry, else the standard Docker config's on this host (DOCKER_CONFIG,
// else ~/.docker/config.json, credential helpers included); none is fine
// for an open registry. Progress lines go to log, which may be nil.
// Credentials appear in neither log lines nor errors.
func (d *Docker) Push(ctx context.Context, tag string, creds Credentials, log func(line string)) (digest string, size int64, err error) {
	ref, err := reference.ParseNormalizedNamed(tag)
	if err != nil {
		return "", 0, fmt.Errorf("push %q: %w", tag, err)
	}
	if _, ok := ref.(reference.Digested); ok {
		return "", 0, fmt.Errorf("push %q: a digest cannot be pushed, only a tag", tag)
	}
	ref = reference.TagNameOnly(ref)
	wantTag := ref.(reference.Tagged).Tag()
	auth, err := buildAuth(creds, reference.Domain(ref))
	if err != nil {
		return "", 0, fmt.Errorf("push %s: %w", tag, err)
	}
	body, err := d.c.ImagePush(ctx, ref.String(), image.PushOptions{RegistryAuth: auth})
	if err != nil {
		return "", 0, fmt.Errorf("push %s: %w", tag, err)
	}
	defer body.Close()
	var pushed *types.PushResult
	err = decodeMessages(body, func(m *jsonmessage.JSONMessage) error {
		if msg := errorMessage(m); msg != "" {
			return fmt.Errorf("push %s: %s", tag, msg)
		}
		if line, ok := statusLine(m); ok && log != nil {
			log(line)
		}
		if m.Aux != nil {
			var r types.PushResult
			if json.Unmarshal(*m.Aux, &r) == nil && r.Digest != "" && r.Tag == wantTag {
				pushed = &r
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, fmt.Errorf("push %s: %w", tag, ctx.Err())
		}
		return "", 0, err
	}
	if pushed == nil {
		return "", 0, fmt.Errorf("push %s: the engine's progress ended without the pushed manifest's digest", tag)
	}
	return pushed.Digest, int64(pushed.Size), nil
}

// buildAuth returns the X-Registry-Auth header value for a registry host:
// the build's own credentials for it (creds) if it brought some, else this
// host's Docker config's (registryAuth).
func buildAuth(creds Credentials, host string) (string, error) {
	if ac, ok := creds.lookup(host); ok {
		return registry.EncodeAuthConfig(ac)
	}
	return registryAuth(host)
}

// registryAuth returns the X-Registry-Auth header value for a registry host
// ("127.0.0.1:5000", "docker.io") from the standard Docker config on this
// host. No config file, or no entry for host, gives empty credentials.
func registryAuth(host string) (string, error) {
	// config.Dir reads DOCKER_CONFIG once per process; read it on every push.
	dir := os.Getenv(config.EnvOverrideConfigDir)
	if dir == "" {
		dir = config.Dir()
	}
	cf, err := config.Load(dir)
	if err != nil {
		return "", fmt.Errorf("reading the docker config in %s: %w", dir, err)
	}
	key := host
	if host == "docker.io" {
		key = dockerHubAuthKey
	}
	ac, err := cf.GetAuthConfig(key)
	if err != nil {
		return "", fmt.Errorf("credentials for %s from the docker config in %s: %w", host, dir, err)
	}
	return registry.EncodeAuthConfig(fromConfig(ac))
}
