// Package gitctx holds the rules of a Git URL build context
// (BuildSpec.git_context, `kiln build https://host/repo.git#ref:subdir`, and
// a --build-context value that is a Git URL), in buildx's syntax: which
// strings are Git URLs, which schemes the farm fetches, and what a ref and
// a subdirectory may be. The CLI and SDK check a URL before anything is
// sent, the gateway when it accepts a spec, the agent before it fetches.
//
// A URL never carries credentials: they would be kept in the build record,
// its events and logs. A private repository's token travels as a sealed
// secret with BuildKit's ids (SecretIDs). Errors match rules.ErrInvalid or
// rules.ErrOverLimit.
package gitctx

import (
	"net/url"
	"path"
	"regexp"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules"
)

// MaxURLBytes bounds a Git URL, fragment included.
const MaxURLBytes = 2048

// Secret ids BuildKit's Git source reads a private repository's
// credentials from, each alone or suffixed with ".<host>" (SecretIDs).
const (
	// AuthTokenSecret holds a token sent as HTTP basic auth
	// (x-access-token:<token>), as GitHub and GitLab take it.
	AuthTokenSecret = "GIT_AUTH_TOKEN"
	// AuthHeaderSecret holds a whole Authorization header value
	// ("basic <base64>", "bearer <token>").
	AuthHeaderSecret = "GIT_AUTH_HEADER"
)

// URL is a Git URL context, parsed.
type URL struct {
	// Remote is what git fetches: the URL without its fragment.
	Remote string
	// Scheme is "https", "http" or "git".
	Scheme string
	// Host is the URL's host, with its port when it names one.
	Host string
	// Ref is the branch, tag or commit to check out ("": the remote's
	// default branch).
	Ref string
	// Subdir is the directory inside the repository that is the context,
	// slash-separated and clean ("": the repository's root).
	Subdir string
}

// String returns u as buildx writes it: Remote#Ref:Subdir.
func (u URL) String() string {
	s := u.Remote
	if u.Ref != "" || u.Subdir != "" {
		s += "#" + u.Ref
		if u.Subdir != "" {
			s += ":" + u.Subdir
		}
	}
	return s
}

var schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*://`)

// IsGitURL reports whether s is a Git URL as buildx and BuildKit tell one
// from a local path: a git:// or ssh:// URL, scp-like "git@host:path", or
// an http(s):// URL whose path ends in ".git". It says nothing about
// whether the farm takes it (Parse).
func IsGitURL(s string) bool {
	if strings.HasPrefix(s, "git@") {
		return true
	}
	m := schemeRE.FindString(s)
	if m == "" {
		return false
	}
	switch strings.ToLower(strings.TrimSuffix(m, "://")) {
	case "git", "ssh":
		return true
	case "http", "https":
		rest := s[len(m):]
		if i := strings.IndexAny(rest, "#?"); i >= 0 {
			rest = rest[:i]
		}
		return strings.HasSuffix(rest, ".git")
	}
	return false
}

// refRE is what a ref may hold: git's ref-name characters (no space,
// '~', '^', ':', '?', '*', '[', '\\' or control characters).
var refRE = regexp.MustCompile(`^[A-Za-z0-9._/@+=,-]+$`)

// Parse checks s, a Git URL context in buildx's syntax
// ("https://host/repo.git#ref:subdir"), and returns it parsed. The farm
// fetches https://, http:// and git:// URLs; ssh ones, credentials in the
// URL and query options are refused with a message saying what to do.
func Parse(s string) (URL, error) {
	if len(s) > MaxURLBytes {
		return URL{}, rules.OverLimitf("Git URL is %d bytes, at most %d", len(s), MaxURLBytes)
	}
	if strings.HasPrefix(s, "git@") || strings.HasPrefix(strings.ToLower(s), "ssh://") {
		return URL{}, rules.Invalidf("Git URL %q: ssh Git URLs are not supported: use the repository's https:// URL, with a token in --secret id=%s,env=VAR for a private one", redact(s), AuthTokenSecret)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' }) {
		return URL{}, rules.Invalidf("Git URL %q holds spaces or control characters", redact(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return URL{}, rules.Invalidf("Git URL %q is not a URL: %v", redact(s), unwrapURLError(err))
	}
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "https", "http", "git":
	default:
		return URL{}, rules.Invalidf("Git URL %q: scheme %q is not fetched: use https:// (or http://, git://)", redact(s), u.Scheme)
	}
	if u.User != nil {
		return URL{}, rules.Invalidf("Git URL %q holds credentials, which would be kept in the build record and its logs: remove them and pass the token with --secret id=%s.%s,env=VAR (or id=%s.%s for a whole Authorization header)", redact(s), AuthTokenSecret, u.Hostname(), AuthHeaderSecret, u.Hostname())
	}
	if u.Host == "" || u.Hostname() == "" {
		return URL{}, rules.Invalidf("Git URL %q names no host", s)
	}
	if u.Opaque != "" || u.Path == "" || u.Path == "/" {
		return URL{}, rules.Invalidf("Git URL %q names no repository path", s)
	}
	if u.RawQuery != "" || u.ForceQuery {
		return URL{}, rules.Invalidf("Git URL %q: query options are not supported: name the ref and subdirectory as #ref:subdir", s)
	}
	if (scheme == "http" || scheme == "https") && !strings.HasSuffix(u.Path, ".git") {
		return URL{}, rules.Invalidf("Git URL %q: an http(s) repository URL must end in .git, as buildx recognises one", s)
	}
	ref, subdir, _ := strings.Cut(u.Fragment, ":")
	if err := checkRef(ref); err != nil {
		return URL{}, rules.Invalidf("Git URL %q: %v", s, err)
	}
	if subdir != "" {
		clean := strings.TrimPrefix(path.Clean("/"+subdir), "/")
		if clean != strings.TrimSuffix(strings.TrimPrefix(subdir, "/"), "/") || strings.Contains(subdir, "\\") {
			return URL{}, rules.Invalidf("Git URL %q: subdirectory %q must be a clean path inside the repository", s, subdir)
		}
		subdir = clean
	}
	remote := *u
	remote.Fragment, remote.RawFragment = "", ""
	remote.Scheme = scheme
	return URL{Remote: remote.String(), Scheme: scheme, Host: u.Host, Ref: ref, Subdir: subdir}, nil
}

// checkRef checks a ref as git takes one on a fetch's command line.
func checkRef(ref string) error {
	switch {
	case ref == "":
		return nil
	case len(ref) > 255:
		return rules.OverLimitf("ref is %d bytes, at most 255", len(ref))
	case !refRE.MatchString(ref):
		return rules.Invalidf("ref %q holds characters a Git ref cannot", ref)
	case strings.HasPrefix(ref, "-"), strings.HasPrefix(ref, "/"), strings.HasSuffix(ref, "/"),
		strings.Contains(ref, ".."), strings.Contains(ref, "//"), strings.HasSuffix(ref, ".lock"), ref == "@":
		return rules.Invalidf("ref %q is not a valid Git ref", ref)
	}
	return nil
}

// SecretIDs are the secret ids whose value authenticates a fetch from
// host, most specific first, as BuildKit's Git source reads them:
// GIT_AUTH_HEADER.<host>, GIT_AUTH_TOKEN.<host> (for host with a port,
// also with its bare name, since a secret id cannot hold ':'), then the
// same without a host. The token ids' values are tokens; the header ids'
// are Authorization header values.
func SecretIDs(host string) (header, token []string) {
	hosts := []string{host}
	if name, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		hosts = []string{name}
	}
	for _, h := range hosts {
		header = append(header, AuthHeaderSecret+"."+h)
		token = append(token, AuthTokenSecret+"."+h)
	}
	return append(header, AuthHeaderSecret), append(token, AuthTokenSecret)
}

// redact hides the user information (a token, a password) of a URL that
// holds one, for messages.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil {
		if u.User == nil {
			return s
		}
		u.User = url.User("xxxxx")
		return u.String()
	}
	if i, at := strings.Index(s, "://"), strings.LastIndex(s, "@"); i >= 0 && at > i {
		return s[:i+3] + "xxxxx" + s[at:]
	}
	return s
}

// unwrapURLError drops net/url's repetition of the URL.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
