// Package policy is the build sandbox policy an agent enforces on a
// tenant's Dockerfile before the engine runs any of it: which frontend
// images ("# syntax=", BUILDKIT_SYNTAX) may be pulled, which ADD URLs may
// be fetched, whether RUN --network=host and --security=insecure may run,
// and cache mounts namespaced per tenant (the Dockerfile is rewritten so
// each RUN --mount=type=cache id starts with the tenant's prefix).
//
// It is pure but for name resolution (an injected Resolver) and reading
// the host's addresses (injected too): Check takes the Dockerfile's bytes
// and returns the refusal or the Dockerfile to serve the engine.
//
//	Dockerfile ──► frontends allowed? ──► parser.Parse ──► ADD / RUN flags / ONBUILD checked ──► cache ids prefixed ──► Dockerfile for the engine
package policy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/dfgitutil"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/buildkit/util/gitutil"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Policy is what one tenant's builds may do on this agent. The zero
// Policy refuses everything optional.
type Policy struct {
	// Tenant names the tenant in messages and prefixes its cache ids.
	Tenant           string
	AllowRemoteAdd   bool
	AllowNetworkHost bool
	AllowInsecure    bool
	// Frontends are the frontend images the engine may pull, as
	// path.Match patterns: the agent's and the tenant's.
	Frontends []string
	// Classic checks for the classic builder, which pulls no frontend
	// (it ignores "# syntax=") and knows no RUN flags: only ADD matters,
	// and the Dockerfile is not rewritten.
	Classic bool
}

// FromRecord is the policy of a build record's tenant: what the gateway
// stamped into the record (none: everything optional refused) and the
// agent's own frontend list.
func FromRecord(tenant string, p *kilnv1.TenantPolicy, agentFrontends []string) Policy {
	return Policy{
		Tenant:           tenant,
		AllowRemoteAdd:   p.GetAllowRemoteAdd(),
		AllowNetworkHost: p.GetAllowNetworkHost(),
		AllowInsecure:    p.GetAllowInsecure(),
		Frontends:        append(slices.Clone(agentFrontends), p.GetFrontendAllow()...),
	}
}

// CachePrefix starts every cache mount id of the tenant's builds, so two
// tenants never share a cache mount. Tenant names hold no "/".
func (p Policy) CachePrefix() string { return "kiln/" + p.Tenant + "/" }

// frontendAllowed reports whether img matches one of the patterns.
// FrontendAllowed reports whether the policy lets the engine pull img as a
// frontend (or another image the build names, such as an SBOM scanner).
func (p Policy) FrontendAllowed(img string) bool { return p.frontendAllowed(img) }

func (p Policy) frontendAllowed(img string) bool {
	for _, pat := range p.Frontends {
		if ok, _ := path.Match(pat, img); ok || pat == img {
			return true
		}
	}
	return false
}

func (p Policy) allowedFrontends() string {
	if len(p.Frontends) == 0 {
		return "none"
	}
	return strings.Join(p.Frontends, ", ")
}

// Refusal is a Dockerfile feature the policy refuses.
type Refusal struct {
	// What is refused, as the Dockerfile spells it: "ADD http://127.0.0.1/x".
	What string
	// Why completes "refused by policy": ": loopback address" or
	// ` (tenant "a" does not allow host networking)`.
	Why string
	// Line is the Dockerfile line, 0 if none.
	Line int
}

func (r *Refusal) Error() string {
	s := r.What + ": refused by policy" + r.Why
	if r.Line > 0 {
		s += fmt.Sprintf(" (Dockerfile line %d)", r.Line)
	}
	return s
}

// Checker checks Dockerfiles against policies.
type Checker struct {
	// Resolver resolves ADD URLs' hosts; nil means net.DefaultResolver.
	Resolver Resolver
	// HostAddrs lists the agent host's addresses, which ADD may not fetch
	// from; nil means HostAddrs.
	HostAddrs func() ([]netip.Addr, error)
}

// maxDockerfileBytes bounds the Dockerfile Check reads.
const maxDockerfileBytes = 4 << 20

// Check checks a Dockerfile and its build args against p and returns the
// Dockerfile to serve the engine: the same lines, each cache mount's id
// prefixed with p.CachePrefix(). A refusal is a *Refusal.
func (c *Checker) Check(ctx context.Context, dockerfile []byte, buildArgs map[string]string, p Policy) ([]byte, error) {
	if len(dockerfile) > maxDockerfileBytes {
		return nil, fmt.Errorf("the Dockerfile is %d bytes, more than the %d the agent checks", len(dockerfile), maxDockerfileBytes)
	}
	if v, ok := buildArgs["BUILDKIT_SYNTAX"]; ok && !p.Classic {
		if img := SyntaxArgImage(v); !p.frontendAllowed(img) {
			return nil, &Refusal{What: "build arg BUILDKIT_SYNTAX=" + v, Why: c.frontendWhy(img, p) + "; remove it to use the engine's built-in frontend"}
		}
	}
	for _, img := range SyntaxImages(dockerfile) {
		if !p.frontendAllowed(img) && !p.Classic {
			return nil, &Refusal{What: "# syntax=" + img, Why: c.frontendWhy(img, p) + "; remove the line to use the engine's built-in frontend"}
		}
	}
	if _, ok := buildArgs["BUILDKIT_CACHE_MOUNT_NS"]; ok {
		return nil, &Refusal{What: "build arg BUILDKIT_CACHE_MOUNT_NS", Why: ": the agent namespaces cache mounts per tenant itself"}
	}
	res, err := parser.Parse(bytes.NewReader(dockerfile))
	if err != nil {
		return nil, fmt.Errorf("the agent cannot check the Dockerfile: %w", err)
	}
	w := &walker{c: c, p: p, args: buildArgs, lex: shell.NewLex(res.EscapeToken), global: map[string]string{}}
	var rewrites []rewrite
	for _, n := range res.AST.Children {
		rw, err := w.node(ctx, n, false)
		if err != nil {
			return nil, err
		}
		if rw != nil {
			rewrites = append(rewrites, *rw)
		}
	}
	if len(rewrites) == 0 || p.Classic {
		return dockerfile, nil
	}
	return applyRewrites(dockerfile, res, rewrites)
}

func (c *Checker) frontendWhy(img string, p Policy) string {
	return fmt.Sprintf(": the engine would pull and run the Dockerfile frontend image %q, which tenant %q may not use (allowed: %s; see the agent's --frontend-allow and the tenant's frontend_allow)", img, p.Tenant, p.allowedFrontends())
}

// walker checks a Dockerfile's instructions in order, tracking the
// variables ADD sources may use.
type walker struct {
	c      *Checker
	p      Policy
	args   map[string]string
	lex    *shell.Lex
	global map[string]string // ARGs before the first FROM with a value
	stage  map[string]string // the current stage's ARGs and ENVs with a value; nil before the first FROM
	own    []netip.Addr
	ownSet bool
}

// node checks one instruction; inOnbuild is set for an ONBUILD's
// trigger. It returns the rewrite the instruction needs, if any.
func (w *walker) node(ctx context.Context, n *parser.Node, inOnbuild bool) (*rewrite, error) {
	switch strings.ToLower(n.Value) {
	case "from":
		w.stage = map[string]string{}
	case "arg":
		for a := n.Next; a != nil; a = a.Next {
			name, def, hasDef := strings.Cut(a.Value, "=")
			env := w.global
			if w.stage != nil {
				env = w.stage
			}
			switch v, ok := w.args[name]; {
			case ok:
				env[name] = v
			case hasDef:
				if x, _, err := w.lex.ProcessWord(def, envMap(env)); err == nil {
					env[name] = x
				} else {
					delete(env, name)
				}
			case w.stage != nil:
				if v, ok := w.global[name]; ok {
					env[name] = v
				}
			}
		}
	case "env":
		if w.stage == nil {
			break
		}
		for k := n.Next; k != nil && k.Next != nil; k = k.Next.Next {
			if x, _, err := w.lex.ProcessWord(k.Next.Value, envMap(w.stage)); err == nil {
				w.stage[k.Value] = x
			} else {
				delete(w.stage, k.Value)
			}
		}
	case "add":
		return nil, w.add(ctx, n)
	case "run":
		return w.run(n, inOnbuild)
	case "onbuild":
		if n.Next != nil && len(n.Next.Children) > 0 {
			if _, err := w.node(ctx, n.Next.Children[0], true); err != nil {
				return nil, err
			}
		}
	}
	return nil, nil
}

// add checks an ADD's sources: a URL or git remote only if the tenant
// allows remote ADD, and never from a refused host.
func (w *walker) add(ctx context.Context, n *parser.Node) error {
	var words []string
	for a := n.Next; a != nil; a = a.Next {
		words = append(words, a.Value)
	}
	if len(words) < 2 {
		return nil // the engine refuses it
	}
	env := w.stage
	if env == nil {
		env = w.global
	}
	for _, src := range words[:len(words)-1] {
		if strings.HasPrefix(src, "<<") { // a heredoc
			continue
		}
		what := "ADD " + src
		expanded := src
		if strings.Contains(src, "$") {
			res, err := w.lex.ProcessWordWithMatches(src, envMap(env))
			literal, _, _ := strings.Cut(src, "$")
			if err != nil || len(res.Unmatched) > 0 {
				if mayBeRemote(literal) {
					return &Refusal{What: what, Why: ": the agent cannot tell what it expands to, so not where the engine would fetch from (give the variables an ARG default or a --build-arg, or write the URL out)", Line: n.StartLine}
				}
				continue
			}
			expanded = res.Result
			what += " (" + expanded + ")"
		}
		for _, s := range strings.Fields(expanded) {
			host, remote := remoteHost(s)
			if !remote {
				continue
			}
			if !w.p.AllowRemoteAdd {
				// Name the address's refusal if the host alone says it;
				// resolve nothing for a tenant that may not fetch at all.
				if why := refusedHost(ctx, nil, w.hostAddrs(), host); why != "" {
					return &Refusal{What: what, Why: ": " + why, Line: n.StartLine}
				}
				return &Refusal{What: what, Why: fmt.Sprintf(" (tenant %q does not allow ADD of URLs or git repositories)", w.p.Tenant), Line: n.StartLine}
			}
			if why := refusedHost(ctx, w.c.resolver(), w.hostAddrs(), host); why != "" {
				return &Refusal{What: what, Why: ": " + why, Line: n.StartLine}
			}
		}
	}
	return nil
}

func (c *Checker) resolver() Resolver {
	if c.Resolver != nil {
		return c.Resolver
	}
	return net.DefaultResolver
}

// hostAddrs are the agent host's addresses; without them every address
// would have to be refused, so an error lists none (and is rare: the
// interfaces are read from the kernel).
func (w *walker) hostAddrs() []netip.Addr {
	if !w.ownSet {
		w.ownSet = true
		f := w.c.HostAddrs
		if f == nil {
			f = HostAddrs
		}
		w.own, _ = f()
	}
	return w.own
}

// remoteHost reports whether an ADD source is fetched from the network,
// and from which host: an http(s) URL (the engine's test is the prefix)
// or a git remote as BuildKit's ADD reads one.
func remoteHost(src string) (string, bool) {
	lower := strings.ToLower(src)
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") {
		return urlHost(src), true
	}
	if _, isGit, err := dfgitutil.ParseGitRef(src); isGit || (err == nil && isGit) {
		u, err := gitutil.ParseURL(src)
		if err != nil {
			return urlHost("https://" + src), true
		}
		return u.Host, true
	}
	if gitutil.IsGitTransport(src) || strings.Contains(src, "://") {
		return urlHost(src), true
	}
	return "", false
}

// urlHost is the host of a URL, "" if it has none.
func urlHost(s string) string {
	_, rest, ok := strings.Cut(s, "://")
	if !ok {
		rest = s
	}
	rest, _, _ = strings.Cut(rest, "/")
	rest, _, _ = strings.Cut(rest, "?")
	rest, _, _ = strings.Cut(rest, "#")
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	if h, _, err := net.SplitHostPort(rest); err == nil {
		return h
	}
	return strings.Trim(rest, "[]")
}

// mayBeRemote reports whether a source whose literal start is prefix may
// turn out to be a URL or git remote once its variables are expanded.
func mayBeRemote(prefix string) bool {
	lower := strings.ToLower(prefix)
	if strings.Contains(lower, "://") || strings.Contains(lower, "@") {
		return true
	}
	for _, scheme := range []string{"http://", "https://", "git://", "ssh://", "git@", "github.com/"} {
		if strings.HasPrefix(scheme, lower) {
			return true
		}
	}
	return false
}

// envMap is a shell.EnvGetter over a map.
type envMap map[string]string

func (e envMap) Get(k string) (string, bool) { v, ok := e[k]; return v, ok }

func (e envMap) Keys() []string {
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	return keys
}
