// Package reference checks image names given to `kiln build -t` with the
// grammar of github.com/distribution/reference, as `docker build -t` does:
//
//	name      := [domain '/'] path
//	domain    := host [':' port]          host: DNS name, IPv4 or [IPv6]
//	path      := component ('/' component)*
//	component := [a-z0-9]+ (separator [a-z0-9]+)*     separator: [._] | __ | -+
//	tag       := [\w][\w.-]{0,127}
//
// The first '/'-separated element is a domain when it contains '.' or ':',
// is "localhost", or has upper-case letters (repository paths never do).
package reference

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxPathLength is the longest repository path the registry grammar allows.
const MaxPathLength = 255

// Reference is a parsed image name with an optional tag.
type Reference struct {
	// Domain is the registry host[:port], "" for Docker Hub short names.
	Domain string
	// Path is the repository path inside the registry.
	Path string
	// Tag is the tag, "" when the name has none (the engine uses "latest").
	Tag string
}

// String returns the reference as it was written.
func (r Reference) String() string {
	s := r.Path
	if r.Domain != "" {
		s = r.Domain + "/" + s
	}
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	return s
}

// Name returns the reference without its tag.
func (r Reference) Name() string {
	if r.Domain == "" {
		return r.Path
	}
	return r.Domain + "/" + r.Path
}

const (
	alphanumeric        = `[a-z0-9]+`
	separator           = `(?:[._]|__|[-]+)`
	domainNameComponent = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
	ipv6address         = `\[(?:[a-fA-F0-9:]+)\]`
	pathComponent       = alphanumeric + `(?:` + separator + alphanumeric + `)*`
	domainName          = domainNameComponent + `(?:\.` + domainNameComponent + `)*`
	host                = `(?:` + domainName + `|` + ipv6address + `)`
	domainAndPort       = host + `(?::[0-9]+)?`
	remoteName          = pathComponent + `(?:/` + pathComponent + `)*`
	tagPattern          = `[\w][\w.-]{0,127}`
)

var (
	domainRE     = regexp.MustCompile(`^` + domainAndPort + `$`)
	pathRE       = regexp.MustCompile(`^` + remoteName + `$`)
	tagRE        = regexp.MustCompile(`^` + tagPattern + `$`)
	identifierRE = regexp.MustCompile(`^[a-f0-9]{64}$`)
)

// Errors Parse wraps, so callers can tell the mistakes apart.
var (
	ErrInvalidFormat = errors.New("invalid reference format")
	ErrUppercase     = errors.New("repository name must be lowercase")
	ErrNameTooLong   = fmt.Errorf("repository name must not be more than %d characters", MaxPathLength)
	ErrDigest        = errors.New("a tag cannot carry a digest (@sha256:…)")
	ErrIdentifier    = errors.New("cannot use a 64-character hexadecimal string as a repository name")
)

// Parse checks that s is a valid name[:tag] to tag a built image with.
// The error names s and says what is wrong with it.
func Parse(s string) (Reference, error) {
	r, err := parse(s)
	if err != nil {
		return Reference{}, fmt.Errorf("invalid tag %q: %w", s, err)
	}
	return r, nil
}

func parse(s string) (Reference, error) {
	if s == "" {
		return Reference{}, errors.New("empty name")
	}
	if strings.Contains(s, "@") {
		return Reference{}, ErrDigest
	}
	if identifierRE.MatchString(s) {
		return Reference{}, ErrIdentifier
	}
	var r Reference
	rest := s
	if first, after, ok := strings.Cut(s, "/"); ok && isDomain(first) {
		if !domainRE.MatchString(first) {
			return Reference{}, fmt.Errorf("%w: registry host %q", ErrInvalidFormat, first)
		}
		r.Domain, rest = first, after
	}
	// The tag follows the last ':' after the last '/' (a ':' before it
	// belonged to the domain's port and was taken above).
	name := rest
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i:], "/") {
		name, r.Tag = rest[:i], rest[i+1:]
		if !tagRE.MatchString(r.Tag) {
			return Reference{}, fmt.Errorf("%w: tag %q must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", ErrInvalidFormat, r.Tag)
		}
	}
	if !pathRE.MatchString(name) {
		if pathRE.MatchString(strings.ToLower(name)) {
			return Reference{}, fmt.Errorf("%w: %q", ErrUppercase, name)
		}
		return Reference{}, fmt.Errorf("%w: repository %q", ErrInvalidFormat, name)
	}
	if len(name) > MaxPathLength {
		return Reference{}, ErrNameTooLong
	}
	r.Path = name
	return r, nil
}

// isDomain applies docker's rule for whether the first path element names
// a registry.
func isDomain(first string) bool {
	return strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first
}
