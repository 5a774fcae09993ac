package kiln

import (
	"net"
	"strconv"
	"strings"

	"google.golang.org/grpc/resolver"
)

// gateways is what Dial makes of its address: one gRPC target that gRPC
// resolves ("host:port", "dns:///name:port", "unix:///path", …), or a
// list of host:port gateways ("a:7700,b:7700") that the client holds
// itself.
//
// A single name is left to gRPC's dns resolver, which hands every A and
// AAAA record of the name to the balancer: a name with several records
// fails over the way a list does.
type gateways struct {
	// target is the address as given, for gRPC when addrs is nil.
	target string
	// addrs are the gateways of a list, in the order given.
	addrs []string
}

// parseGateways parses a Dial address. An address with a comma is a list
// of host:port entries: each a DNS name or an IP address (IPv6 in
// brackets) and a port from 1 to 65535, none repeated. Anything else (a
// unix socket even with commas in its path) is one gRPC target, passed on
// unchanged.
func parseGateways(addr string) (gateways, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return gateways{}, invalidArgumentf("no gateway address")
	}
	if !strings.Contains(addr, ",") || strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unix-abstract:") {
		return gateways{target: addr}, nil // a socket path may hold commas
	}
	var g gateways
	seen := map[string]bool{}
	for entry := range strings.SplitSeq(addr, ",") {
		entry = strings.TrimSpace(entry)
		if err := checkListEntry(entry); err != nil {
			return gateways{}, err
		}
		if seen[entry] {
			return gateways{}, invalidArgumentf("gateway list %q names %s twice", addr, entry)
		}
		seen[entry] = true
		g.addrs = append(g.addrs, entry)
	}
	g.target = strings.Join(g.addrs, ",")
	return g, nil
}

// checkListEntry checks one entry of a gateway list.
func checkListEntry(entry string) error {
	if entry == "" {
		return invalidArgumentf("empty entry in the gateway list: separate host:port addresses with single commas")
	}
	if strings.Contains(entry, "/") {
		return invalidArgumentf("gateway list entry %q: a list takes host:port entries; a gRPC target such as dns:///name:port or unix:///path stands alone", entry)
	}
	host, port, err := net.SplitHostPort(entry)
	if err != nil {
		return invalidArgumentf("gateway list entry %q is not host:port (an IPv6 address goes in brackets: [::1]:7700)", entry)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || strconv.FormatUint(p, 10) != port {
		return invalidArgumentf("gateway list entry %q: port %q is not a number from 1 to 65535", entry, port)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.To4() == nil && !strings.HasPrefix(entry, "[") {
			return invalidArgumentf("gateway list entry %q: an IPv6 address goes in brackets: [%s]:%s", entry, host, port)
		}
		return nil
	}
	if strings.HasPrefix(entry, "[") {
		return invalidArgumentf("gateway list entry %q: only an IPv6 address goes in brackets", entry)
	}
	if !validHostName(host) {
		return invalidArgumentf("gateway list entry %q: %q is neither an IP address nor a DNS name", entry, host)
	}
	return nil
}

// validHostName reports whether name is a DNS name: dot-separated labels
// of letters, digits, '-' and '_' (not starting or ending with '-'), at
// most 63 bytes each and 253 in all.
func validHostName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// list reports whether the address was a list.
func (g gateways) list() bool { return g.addrs != nil }

// local reports whether every gateway is on this machine: the strictest
// reading of a list, so that one remote entry puts the whole list under
// the rules for a remote gateway (TLS, no token in plaintext).
func (g gateways) local() bool {
	if !g.list() {
		return isLocalTarget(g.target)
	}
	for _, a := range g.addrs {
		if !isLocalTarget(a) {
			return false
		}
	}
	return true
}

// String names the gateways for messages: the list joined by ", ", or
// the target.
func (g gateways) String() string {
	if g.list() {
		return strings.Join(g.addrs, ", ")
	}
	return g.target
}

// resolverState is the state the list's resolver hands to gRPC: one
// endpoint per gateway, each verified by TLS as its own host (a DNS name,
// or an IP address that its certificate must name as an IP SAN).
func (g gateways) resolverState() resolver.State {
	var s resolver.State
	for _, a := range g.addrs {
		host, _, _ := net.SplitHostPort(a)
		s.Endpoints = append(s.Endpoints, resolver.Endpoint{
			Addresses: []resolver.Address{{Addr: a, ServerName: host}},
		})
	}
	return s
}
