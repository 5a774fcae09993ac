package tenants

import (
	"fmt"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules/registryhost"
)

// pattern is a parsed push namespace: a repository prefix (ending in "/")
// for "host/path/*", or one repository for "host/path".
type pattern struct {
	repo   string
	prefix bool
}

// parsePattern parses a push namespace. A first component without '.' or
// ':' (and not "localhost") is a Docker Hub path, as in image references.
func parsePattern(p string) (pattern, error) {
	bad := func(why string) (pattern, error) {
		return pattern{}, fmt.Errorf("push namespace %q: %s (want e.g. registry.example.com/team-a/*)", p, why)
	}
	if p == "" || strings.ContainsAny(p, " \t\r\n@") {
		return bad("empty or holds spaces or a digest")
	}
	prefix := false
	body := p
	if strings.HasSuffix(p, "/*") {
		prefix, body = true, strings.TrimSuffix(p, "/*")
	}
	if strings.Contains(body, "*") {
		return bad(`"*" is allowed only as the whole last component`)
	}
	if strings.HasSuffix(body, "/") || strings.Contains(body, "//") || body == "" {
		return bad("empty path component")
	}
	if prefix {
		if !strings.Contains(body, "/") && (strings.ContainsAny(body, ".:") || body == "localhost") {
			return pattern{repo: registryhost.Normalize(body) + "/", prefix: true}, nil // a whole registry
		}
		return pattern{repo: normalizeRepository(body, false) + "/", prefix: true}, nil
	}
	repo := NormalizeRepository(body)
	if strings.Contains(repo[strings.LastIndexByte(repo, '/')+1:], ":") {
		return bad("a namespace names repositories, not tags")
	}
	return pattern{repo: repo}, nil
}

// NormalizeRepository spells an image repository ("host/path", no tag) the
// way push namespaces are matched: host normalised (registryhost.Normalize,
// the rule the CLI and the agent apply too), a Docker Hub path without host
// gets "docker.io/" and, with one component, "library/".
func NormalizeRepository(repo string) string { return normalizeRepository(repo, true) }

// normalizeRepository is NormalizeRepository; library adds "library/" to a
// one-component Docker Hub path (not for a namespace prefix).
func normalizeRepository(repo string, library bool) string {
	host, path, ok := strings.Cut(repo, "/")
	if !ok || (!strings.ContainsAny(host, ".:") && host != "localhost") {
		host, path = "docker.io", repo
	}
	host = registryhost.Normalize(host)
	if library && host == "docker.io" && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	return host + "/" + path
}

// MayPush reports whether the tenant may push to repository repo (as
// NormalizeRepository spells it: "host/path", no tag or digest).
func (t *Tenant) MayPush(repo string) bool {
	for _, s := range t.PushNamespaces {
		p, err := parsePattern(s)
		if err != nil {
			continue
		}
		if p.prefix && strings.HasPrefix(repo, p.repo) || !p.prefix && repo == p.repo {
			return true
		}
	}
	return false
}
