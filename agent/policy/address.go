package policy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Resolver looks up a host name's addresses; *net.Resolver is one.
type Resolver interface {
	LookupIP(ctx context.Context, network, host string) ([]net.IP, error)
}

var _ Resolver = (*net.Resolver)(nil)

// metadataNames are cloud metadata services' host names, refused whatever
// they resolve to here.
var metadataNames = map[string]bool{
	"metadata.google.internal": true, "metadata.goog": true, "metadata": true,
	"instance-data": true, "instance-data.ec2.internal": true, "metadata.azure.com": true,
}

// metadataAddrs are metadata services outside the link-local range.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
}

// refusedHost says why a fetch from host must not happen, or "" if it may.
// own are the agent host's addresses. A nil r resolves nothing: only
// what the host's spelling says is checked.
func refusedHost(ctx context.Context, r Resolver, own []netip.Addr, host string) string {
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if i := strings.IndexByte(host, '%'); i >= 0 { // an IPv6 zone
		host = host[:i]
	}
	switch {
	case host == "":
		return "no host"
	case host == "localhost" || strings.HasSuffix(host, ".localhost"):
		return "loopback address"
	case metadataNames[host]:
		return "cloud metadata endpoint"
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if looksNumeric(host) {
		return "numeric host in a non-standard form"
	} else if r == nil {
		return ""
	} else {
		ips, err := r.LookupIP(ctx, "ip", host)
		if err != nil || len(ips) == 0 {
			return fmt.Sprintf("host %s does not resolve here, so where the engine would fetch from cannot be checked", host)
		}
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a)
			}
		}
	}
	for _, a := range addrs {
		if why := refusedAddr(a.Unmap(), own); why != "" {
			if a.Unmap().String() != host && a.String() != host {
				return fmt.Sprintf("%s (%s resolves to %s)", why, host, a.Unmap())
			}
			return why
		}
	}
	return ""
}

// looksNumeric reports whether every dot-separated part of host is a
// number in decimal, octal or 0x hex, as inet_aton reads them.
func looksNumeric(host string) bool {
	for _, part := range strings.Split(host, ".") {
		p := strings.ToLower(part)
		switch {
		case p == "":
			return false
		case strings.HasPrefix(p, "0x"):
			if strings.Trim(p[2:], "0123456789abcdef") != "" {
				return false
			}
		default:
			if strings.Trim(p, "0123456789") != "" {
				return false
			}
		}
	}
	return true
}

// refusedAddr says why an address must not be fetched from, or "".
func refusedAddr(a netip.Addr, own []netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "loopback address"
	case a == netip.MustParseAddr("169.254.169.254") || a == netip.MustParseAddr("169.254.170.2"):
		return "cloud metadata endpoint"
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		return "link-local address"
	case a.IsUnspecified():
		return "unspecified address"
	case a.IsMulticast():
		return "multicast address"
	}
	for _, m := range metadataAddrs {
		if a == m {
			return "cloud metadata endpoint"
		}
	}
	for _, o := range own {
		if a == o.Unmap() {
			return "an address of the agent's host"
		}
	}
	return ""
}

// HostAddrs returns the addresses of this host's network interfaces.
func HostAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list the host's addresses: %w", err)
	}
	var out []netip.Addr
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}
