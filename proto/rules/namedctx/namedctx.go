// Package namedctx holds the rules of named build contexts
// (BuildSpec.build_contexts, buildx --build-context NAME=VALUE): what a
// name may be and how buildx normalises it, which values the farm takes
// (a local directory uploaded like the main context, docker-image://REF,
// a Git URL), and how many. The CLI parses the flag with it, the SDK
// checks before it uploads, the gateway when it accepts a spec, the agent
// before it hands the contexts to its engine.
//
// Errors match rules.ErrInvalid or rules.ErrOverLimit.
package namedctx

import (
	"regexp"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
)

const (
	// Feature is the engine feature (Agent.features) a build with named
	// contexts needs: its engine's Dockerfile frontend resolves
	// "context:NAME" attributes. Standalone BuildKit has it; Docker 20.10's
	// /build API passes no such attribute.
	Feature = "named-contexts"
	// MaxContexts bounds a build's named contexts.
	MaxContexts = 32
	// MaxNameBytes bounds a name, as an image reference's name is bounded.
	MaxNameBytes = 255
	// MaxSourceBytes bounds a docker-image:// or Git URL value.
	MaxSourceBytes = 2048
	// ImageScheme prefixes a value naming an image.
	ImageScheme = "docker-image://"
)

// Kind is what a --build-context value names.
type Kind int

const (
	// KindLocal is a local directory, uploaded through the farm's CAS.
	KindLocal Kind = iota
	// KindImage is docker-image://REF[@digest].
	KindImage
	// KindGit is a Git URL the engine fetches.
	KindGit
)

// ParseFlag splits one --build-context value, "NAME=VALUE", and returns
// the name normalised as buildx does (NormalizeName) and the value with
// its kind. A local directory's value is returned as given (the caller
// resolves and packs it); a source's is checked (CheckSource).
func ParseFlag(v string) (name, value string, kind Kind, err error) {
	n, value, ok := strings.Cut(v, "=")
	if !ok || n == "" || value == "" {
		return "", "", 0, rules.Invalidf("invalid --build-context %q: want NAME=VALUE (a directory, docker-image://REF or a Git URL)", v)
	}
	if name, err = NormalizeName(n); err != nil {
		return "", "", 0, err
	}
	switch kind = KindOf(value); kind {
	case KindLocal:
		if err := checkLocalValue(name, value); err != nil {
			return "", "", 0, err
		}
	default:
		if err := CheckSource(value); err != nil {
			return "", "", 0, rules.Invalidf("--build-context %s: %v", name, err)
		}
	}
	return name, value, kind, nil
}

// KindOf tells what a --build-context value names: an image, a Git URL
// (gitctx.IsGitURL) or, for anything else, a local directory.
func KindOf(value string) Kind {
	switch {
	case strings.HasPrefix(value, ImageScheme):
		return KindImage
	case gitctx.IsGitURL(value):
		return KindGit
	}
	return KindLocal
}

// checkLocalValue refuses values buildx takes that the farm does not,
// which would otherwise be read as a local directory of that name.
func checkLocalValue(name, value string) error {
	switch {
	case strings.HasPrefix(value, "oci-layout://"):
		return rules.Invalidf("--build-context %s=%s: oci-layout:// contexts are not supported: push the image to a registry and use docker-image://REF", name, value)
	case strings.HasPrefix(value, "target:"):
		return rules.Invalidf("--build-context %s=%s: target: contexts are buildx bake's: name the stage in the Dockerfile (FROM %s AS %s)", name, value, strings.TrimPrefix(value, "target:"), name)
	case strings.HasPrefix(value, "input:"):
		return rules.Invalidf("--build-context %s=%s: input: contexts are not supported", name, value)
	case strings.Contains(value, "://"):
		return rules.Invalidf("--build-context %s=%s: only docker-image://, Git URLs (https://host/repo.git#ref) and local directories are supported", name, value)
	}
	return nil
}

// CheckSource checks a value the engine resolves itself:
// docker-image://REF[:tag][@digest] or a Git URL the farm fetches
// (gitctx.Parse).
func CheckSource(s string) error {
	if len(s) > MaxSourceBytes {
		return rules.OverLimitf("value is %d bytes, at most %d", len(s), MaxSourceBytes)
	}
	switch KindOf(s) {
	case KindImage:
		ref := strings.TrimPrefix(s, ImageScheme)
		if ref == "scratch" {
			return nil // BuildKit's empty image
		}
		if err := checkImageRef(ref); err != nil {
			return rules.Invalidf("%s: %v", s, err)
		}
		return nil
	case KindGit:
		_, err := gitctx.Parse(s)
		return err
	}
	return rules.Invalidf("%q is neither docker-image://REF nor a Git URL", s)
}

// Check checks a spec's named contexts as the gateway takes them: at most
// MaxContexts, each named once by a normalised name other than "context"
// and "dockerfile", and either an uploaded local context (a manifest
// reference; the caller checks it exists) or a source (CheckSource).
func Check(ncs []*kilnv1.NamedContext) error {
	if len(ncs) > MaxContexts {
		return rules.OverLimitf("%d build contexts given, at most %d", len(ncs), MaxContexts)
	}
	seen := make(map[string]bool, len(ncs))
	for _, nc := range ncs {
		name := nc.GetName()
		norm, err := NormalizeName(name)
		if err != nil {
			return err
		}
		if norm != name {
			return rules.Invalidf("build context name %q is not normalised: send %q", name, norm)
		}
		if seen[name] {
			return rules.Invalidf("build context %q is given twice", name)
		}
		seen[name] = true
		hasRef, src := nc.GetContext() != nil, nc.GetSource()
		switch {
		case hasRef && src != "":
			return rules.Invalidf("build context %q has both an uploaded context and a source %q: give one", name, src)
		case hasRef:
			if nc.GetContext().GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
				return rules.Invalidf("build context %q must be uploaded as a manifest (ContextService), not a tar", name)
			}
		case src == "":
			return rules.Invalidf("build context %q has neither an uploaded context nor a source", name)
		default:
			if err := CheckSource(src); err != nil {
				return rules.Invalidf("build context %q: %v", name, err)
			}
		}
	}
	return nil
}

// LocalName is the name under which the agent's session serves a local
// named context's directory to the engine, as buildx names it: the
// context's name, "_context" and "_dockerfile" aside.
func LocalName(name string) string {
	if name == "context" || name == "dockerfile" {
		return "_" + name
	}
	return name
}

// Image reference grammar (github.com/distribution/reference), for names
// and docker-image:// values.
var (
	pathComponent = `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
	domainPart    = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
	domain        = domainPart + `(?:\.` + domainPart + `)*(?::[0-9]+)?`
	tag           = `[\w][\w.-]{0,127}`
	digest        = `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`
	pathRE        = regexp.MustCompile(`^` + pathComponent + `(?:/` + pathComponent + `)*$`)
	domainRE      = regexp.MustCompile(`^` + domain + `$`)
	tagRE         = regexp.MustCompile(`^` + tag + `$`)
	digestRE      = regexp.MustCompile(`^` + digest + `$`)
)

// parsedRef is an image reference split into its parts.
type parsedRef struct {
	domain, path, tag, digest string
}

// parseRef parses an image reference as distribution/reference's
// ParseNormalizedNamed does: a first component with '.' or ':', or
// "localhost", is a registry; without one the registry is docker.io and
// a one-component path is under library/.
func parseRef(s string) (parsedRef, error) {
	var r parsedRef
	if s == "" {
		return r, rules.Invalidf("the reference is empty")
	}
	if len(s) > MaxNameBytes {
		return r, rules.OverLimitf("reference %q is %d bytes, at most %d", s[:32]+"…", len(s), MaxNameBytes)
	}
	rest := s
	if i := strings.Index(rest, "@"); i >= 0 {
		rest, r.digest = rest[:i], rest[i+1:]
		if !digestRE.MatchString(r.digest) {
			return r, rules.Invalidf("reference %q: %q is not a digest (sha256:<hex>)", s, r.digest)
		}
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		rest, r.tag = rest[:i], rest[i+1:]
		if !tagRE.MatchString(r.tag) {
			return r, rules.Invalidf("reference %q: %q is not a tag", s, r.tag)
		}
	}
	first, remainder, hasSlash := strings.Cut(rest, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first) {
		r.domain, r.path = first, remainder
		if !domainRE.MatchString(r.domain) {
			return r, rules.Invalidf("reference %q: %q is not a registry host", s, r.domain)
		}
	} else {
		r.domain, r.path = "docker.io", rest
	}
	if r.domain == "index.docker.io" {
		r.domain = "docker.io"
	}
	if r.domain == "docker.io" && !strings.Contains(r.path, "/") {
		r.path = "library/" + r.path
	}
	if !pathRE.MatchString(r.path) {
		if strings.ToLower(r.path) != r.path {
			return r, rules.Invalidf("reference %q: a repository name must be lowercase", s)
		}
		return r, rules.Invalidf("reference %q is not a valid image reference", s)
	}
	return r, nil
}

// familiar is r as docker shows it: docker.io/library/ and docker.io/
// dropped.
func (r parsedRef) familiar() string {
	s := r.path
	if r.domain != "docker.io" {
		s = r.domain + "/" + r.path
	} else if p, ok := strings.CutPrefix(r.path, "library/"); ok && !strings.Contains(p, "/") {
		s = p
	}
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest
	}
	return s
}

// NormalizeName returns a --build-context name as buildx keys it: parsed
// as an image reference (a stage name is a one-component one), in its
// familiar form without ":latest" ("docker.io/library/alpine:latest" is
// "alpine"). The Dockerfile's FROM and COPY --from name it the same way.
// "context" and "dockerfile" are refused: the farm reads the Dockerfile
// itself, to check it against the tenant's policy.
func NormalizeName(name string) (string, error) {
	if strings.Contains(name, "::") {
		return "", rules.Invalidf("build context name %q: per-platform names (NAME::PLATFORM) are not supported", name)
	}
	r, err := parseRef(name)
	if err != nil {
		return "", rules.Invalidf("invalid build context name %q: %v", name, err)
	}
	n := strings.TrimSuffix(r.familiar(), ":latest")
	if n == "context" || n == "dockerfile" {
		return "", rules.Invalidf("build context name %q is not supported: the farm checks the Dockerfile and main context it is sent (use -f and the PATH argument)", n)
	}
	return n, nil
}

// checkImageRef checks a docker-image:// value's reference.
func checkImageRef(ref string) error {
	_, err := parseRef(ref)
	return err
}
