// Package buildflags holds the rules for the `docker buildx build` flags
// that shape a build's RUN steps — --network, --add-host, --shm-size and
// --ulimit — and for a Dockerfile sent apart from its context: their
// syntax as buildx and the docker CLI parse it (the CLI and SDK parse
// with it), and what a BuildSpec may hold (the CLI, SDK and gateway
// check with it; the agent maps the result onto its engine).
package buildflags

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

// Network modes (BuildSpec.network); "" means NetworkDefault.
const (
	NetworkDefault = "default"
	NetworkNone    = "none"
	NetworkHost    = "host"
)

// Limits.
const (
	// MaxExtraHosts bounds BuildSpec.extra_hosts.
	MaxExtraHosts = 256
	// MaxDockerfileBytes bounds BuildSpec.dockerfile_inline: the
	// Dockerfile travels in the build's record.
	MaxDockerfileBytes = 256 << 10
)

// ErrNetworkHost matches the error of a build asking for the host's
// network for a tenant whose policy does not allow it: the gateway answers
// codes.PermissionDenied.
var ErrNetworkHost = errors.New("network host not allowed")

// Ulimits are the names --ulimit takes, as docker's go-units knows them.
var Ulimits = []string{"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}

// ParseNetwork reads a --network value: default, none or host.
func ParseNetwork(v string) (string, error) {
	switch v {
	case "", NetworkDefault:
		return "", nil
	case NetworkNone, NetworkHost:
		return v, nil
	}
	return "", rules.Invalidf("network mode %q is not supported: want default, none or host (BuildKit builds cannot join a named network)", v)
}

// CheckNetwork reports whether a build may use network mode n when its
// tenant's policy allows the host's network (allowHost) or not. Its error
// for host matches ErrNetworkHost and names the setting.
func CheckNetwork(n string, allowHost bool) error {
	if _, err := ParseNetwork(n); err != nil {
		return err
	}
	if n == NetworkHost && !allowHost {
		return fmt.Errorf("%w: --network host lets the build's steps use the agent host's network; the farm allows it only to tenants whose policy sets allow_network_host (ask the farm's operator)", ErrNetworkHost)
	}
	return nil
}

// ParseExtraHost reads an --add-host value, "host:ip" or "host=ip" (an
// IPv6 address may be in brackets), into BuildSpec's "host:ip". The
// engine's host-gateway is refused: on a farm it would be an agent's.
func ParseExtraHost(v string) (string, error) {
	name, ip, ok := strings.Cut(v, "=")
	if !ok {
		name, ip, ok = strings.Cut(v, ":")
	}
	if !ok || name == "" || ip == "" {
		return "", rules.Invalidf("invalid --add-host %q: want host:ip (e.g. registry.local:10.0.0.5)", v)
	}
	if err := checkHostName(name); err != nil {
		return "", rules.Invalidf("invalid --add-host %q: %v", v, err)
	}
	if ip == "host-gateway" {
		return "", rules.Invalidf("invalid --add-host %q: host-gateway would be the address of whichever agent runs the build; give an IP address", v)
	}
	ip = strings.TrimSuffix(strings.TrimPrefix(ip, "["), "]")
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Zone() != "" {
		return "", rules.Invalidf("invalid --add-host %q: %q is not an IP address", v, ip)
	}
	return name + ":" + addr.String(), nil
}

// SplitExtraHost splits a valid BuildSpec extra host "host:ip" (the IP
// may hold colons itself).
func SplitExtraHost(h string) (name, ip string) {
	name, ip, _ = strings.Cut(h, ":")
	return name, ip
}

func checkHostName(name string) error {
	if len(name) > 253 {
		return errors.New("the host name is longer than 253 characters")
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == '#' || r == ',' || r == '/' {
			return fmt.Errorf("the host name %q holds %q", name, r)
		}
	}
	return nil
}

// ParseSize reads a --shm-size value as docker does (go-units'
// RAMInBytes): bytes, or a number with a binary unit b, k, m, g, t or p
// (optionally followed by "b" or "ib", any case): "64m" is 64 MiB.
func ParseSize(v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseFloat(num, 64)
	if num == "" || err != nil {
		return 0, rules.Invalidf("invalid size %q: want bytes or a number with a unit, e.g. 512m or 2g", v)
	}
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "ib"), "b")
	shift := strings.Index("kmgtp", unit) + 1
	if len(unit) > 1 || (unit != "" && shift == 0) {
		return 0, rules.Invalidf("invalid size %q: unknown unit %q (want b, k, m, g, t or p)", v, unit)
	}
	if unit != "" {
		n *= math.Pow(1024, float64(shift))
	}
	if n >= math.MaxInt64 {
		return 0, rules.Invalidf("invalid size %q: too large", v)
	}
	return int64(n), nil
}

// ParseUlimit reads an --ulimit value as docker does: name=soft[:hard],
// the hard limit being the soft one when absent, -1 meaning unlimited.
func ParseUlimit(v string) (*kilnv1.Ulimit, error) {
	name, limits, ok := strings.Cut(v, "=")
	if !ok || limits == "" {
		return nil, rules.Invalidf("invalid --ulimit %q: want name=soft[:hard], e.g. nofile=1024:2048", v)
	}
	softS, hardS, hasHard := strings.Cut(limits, ":")
	soft, err := strconv.ParseInt(softS, 10, 64)
	if err != nil {
		return nil, rules.Invalidf("invalid --ulimit %q: soft limit %q is not a whole number", v, softS)
	}
	hard := soft
	if hasHard {
		if hard, err = strconv.ParseInt(hardS, 10, 64); err != nil {
			return nil, rules.Invalidf("invalid --ulimit %q: hard limit %q is not a whole number", v, hardS)
		}
	}
	u := &kilnv1.Ulimit{Name: name, Soft: soft, Hard: hard}
	if err := checkUlimit(u); err != nil {
		return nil, rules.Invalidf("invalid --ulimit %q: %v", v, err)
	}
	return u, nil
}

func checkUlimit(u *kilnv1.Ulimit) error {
	if !slices.Contains(Ulimits, u.GetName()) {
		return fmt.Errorf("%q is not a limit name (want one of %s)", u.GetName(), strings.Join(Ulimits, ", "))
	}
	if u.GetSoft() < -1 || u.GetHard() < -1 {
		return errors.New("a limit is a whole number ≥ 0, or -1 for unlimited")
	}
	if u.GetHard() != -1 && (u.GetSoft() == -1 || u.GetSoft() > u.GetHard()) {
		return fmt.Errorf("the soft limit %d is above the hard limit %d", u.GetSoft(), u.GetHard())
	}
	return nil
}

// Validate checks the spec's network, extra_hosts, shm_size_bytes,
// ulimits and dockerfile_inline (not the tenant's permission for the
// host's network: CheckNetwork). Its errors match rules.ErrInvalid or
// rules.ErrOverLimit.
func Validate(spec *kilnv1.BuildSpec) error {
	if _, err := ParseNetwork(spec.GetNetwork()); err != nil {
		return err
	}
	if len(spec.GetExtraHosts()) > MaxExtraHosts {
		return rules.OverLimitf("%d extra hosts given, at most %d allowed", len(spec.GetExtraHosts()), MaxExtraHosts)
	}
	for _, h := range spec.GetExtraHosts() {
		if got, err := ParseExtraHost(h); err != nil || got != h {
			return rules.Invalidf("extra host %q is not host:ip with a plain IP address", h)
		}
	}
	if spec.GetShmSizeBytes() < 0 {
		return rules.Invalidf("shm size %d is negative", spec.GetShmSizeBytes())
	}
	seen := map[string]bool{}
	for _, u := range spec.GetUlimits() {
		if err := checkUlimit(u); err != nil {
			return rules.Invalidf("ulimit %s: %v", u.GetName(), err)
		}
		if seen[u.GetName()] {
			return rules.Invalidf("ulimit %s is given twice", u.GetName())
		}
		seen[u.GetName()] = true
	}
	if n := len(spec.GetDockerfileInline()); n > MaxDockerfileBytes {
		return rules.OverLimitf("the Dockerfile sent with the build is %d bytes, at most %d allowed", n, MaxDockerfileBytes)
	}
	return nil
}
