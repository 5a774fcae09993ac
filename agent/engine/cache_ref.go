package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	clog "github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/sirupsen/logrus"
)

// quiet is a logger for containerd's resolver, which logs every 404 it
// meets: a missing warm start ref is no news.
var quiet = func() *logrus.Entry {
	l := logrus.New()
	l.Out = io.Discard
	return logrus.NewEntry(l)
}()

// ProbeCacheRef asks ref's registry whether it holds ref, a cache manifest
// or an image with inline cache, as an engine would before importing from
// it: credentials are the build's for that registry, else this host's
// Docker config; loopback registries are spoken to over plain HTTP, as
// engines do. It says why not: the ref is missing, or the registry does
// not answer or refuses.
func ProbeCacheRef(ctx context.Context, ref string, creds Credentials) error {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("cache ref %q: %w", ref, err)
	}
	named = reference.TagNameOnly(named)
	ctx = clog.WithLogger(ctx, quiet)
	provider := creds.authProvider()
	auth := docker.NewDockerAuthorizer(docker.WithAuthClient(http.DefaultClient), docker.WithAuthCreds(func(host string) (string, string, error) {
		ac, err := provider(ctx, host, nil, nil)
		if err != nil {
			return "", "", nil // anonymous
		}
		if ac.IdentityToken != "" {
			return "", ac.IdentityToken, nil
		}
		return ac.Username, ac.Password, nil
	}))
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithAuthorizer(auth), docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	if _, _, err := resolver.Resolve(ctx, named.String()); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("cache %s does not exist yet", ref)
		}
		return fmt.Errorf("cache %s: %w", ref, err)
	}
	return nil
}
