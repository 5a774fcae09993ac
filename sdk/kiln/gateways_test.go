package kiln

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseGateways(t *testing.T) {
	tests := []struct {
		name, addr string
		// target is the single target, or list the entries; err a part of
		// the message of an InvalidArgument error.
		target string
		list   []string
		err    string
	}{
		{name: "host and port", addr: "farm.example:7700", target: "farm.example:7700"},
		{name: "gRPC target", addr: "dns:///farm.example:7700", target: "dns:///farm.example:7700"},
		{name: "unix socket with a comma", addr: "unix:///run/a,b.sock", target: "unix:///run/a,b.sock"},
		{name: "surrounding space", addr: " 127.0.0.1:7700 ", target: "127.0.0.1:7700"},
		{name: "two gateways", addr: "a.example:7700,b.example:7700", list: []string{"a.example:7700", "b.example:7700"}},
		{name: "spaces around entries", addr: "10.0.0.1:7700 , 10.0.0.2:7700", list: []string{"10.0.0.1:7700", "10.0.0.2:7700"}},
		{name: "IPv6 in brackets", addr: "[::1]:7700,[fd00::2]:7700", list: []string{"[::1]:7700", "[fd00::2]:7700"}},
		{name: "name with underscore and trailing dot", addr: "gw_1.example.:1,gw-2:65535", list: []string{"gw_1.example.:1", "gw-2:65535"}},
		{name: "empty", addr: "  ", err: "no gateway address"},
		{name: "trailing comma", addr: "a:7700,", err: "empty entry"},
		{name: "double comma", addr: "a:7700,,b:7700", err: "empty entry"},
		{name: "no port", addr: "a:7700,b", err: `"b" is not host:port`},
		{name: "empty host", addr: "a:7700,:7700", err: "neither an IP address nor a DNS name"},
		{name: "port zero", addr: "a:7700,b:0", err: "not a number from 1 to 65535"},
		{name: "port too big", addr: "a:7700,b:65536", err: "not a number from 1 to 65535"},
		{name: "named port", addr: "a:7700,b:https", err: "not a number from 1 to 65535"},
		{name: "port with sign", addr: "a:7700,b:+80", err: "not a number from 1 to 65535"},
		{name: "port with leading zero", addr: "a:7700,b:080", err: "not a number from 1 to 65535"},
		{name: "scheme in a list", addr: "dns:///a:7700,b:7700", err: "stands alone"},
		{name: "unbracketed IPv6", addr: "a:7700,::1:7700", err: "not host:port"},
		{name: "bracketed name", addr: "a:7700,[b]:7700", err: "only an IPv6 address goes in brackets"},
		{name: "bad name", addr: "a:7700,b c:7700", err: "neither an IP address nor a DNS name"},
		{name: "label starting with a hyphen", addr: "a:7700,-b:7700", err: "neither an IP address nor a DNS name"},
		{name: "empty label", addr: "a:7700,b..c:7700", err: "neither an IP address nor a DNS name"},
		{name: "user info", addr: "a:7700,u@b:7700", err: "neither an IP address nor a DNS name"},
		{name: "repeated", addr: "a:7700,b:7700,a:7700", err: "names a:7700 twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := parseGateways(tt.addr)
			if tt.err != "" {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseGateways(%q) = %v, %v; want InvalidArgument with %q", tt.addr, g, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseGateways(%q): %v", tt.addr, err)
			}
			if !slices.Equal(g.addrs, tt.list) {
				t.Errorf("list %q, want %q", g.addrs, tt.list)
			}
			if tt.list == nil && g.target != tt.target {
				t.Errorf("target %q, want %q", g.target, tt.target)
			}
		})
	}
}

// FuzzParseGateways checks what parseGateways makes of any input: an
// error, one target without a list, or a list of valid, distinct host:port
// entries whose resolver state names each with its own host.
func FuzzParseGateways(f *testing.F) {
	for _, s := range []string{"a:1", "a:1,b:2", "[::1]:7700,127.0.0.1:7700", "dns:///x:1", ",", "a:1,,", "[a]:1,b:2", "a:99999,b:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		g, err := parseGateways(addr)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if !g.list() {
			if g.target == "" || g.target != strings.TrimSpace(addr) {
				t.Fatalf("single target %q from %q", g.target, addr)
			}
			return
		}
		if len(g.addrs) < 2 {
			t.Fatalf("a list of %d from %q", len(g.addrs), addr)
		}
		seen := map[string]bool{}
		st := g.resolverState()
		for i, a := range g.addrs {
			host, port, err := net.SplitHostPort(a)
			if err != nil || host == "" || port == "" || seen[a] || strings.ContainsAny(a, "/, \t") {
				t.Fatalf("entry %q of %q", a, addr)
			}
			seen[a] = true
			if got := st.Endpoints[i].Addresses[0]; got.Addr != a || got.ServerName != host {
				t.Fatalf("resolver address %v for entry %q", got, a)
			}
		}
	})
}

func TestIsLocalAddressList(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7700,127.0.0.2:7700":       true,
		"localhost:7700,[::1]:7700":           true,
		"127.0.0.1:7700,farm.example:7700":    false,
		"farm.example:7700,127.0.0.1:7700":    false,
		"10.0.0.1:7700,10.0.0.2:7700":         false,
		"127.0.0.1:7700,,127.0.0.2:7700":      false, // Dial refuses it
		"localhost.evil.example:1,[::1]:7700": false,
	} {
		if got := IsLocalAddress(addr); got != want {
			t.Errorf("IsLocalAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestTLSRuleOverAList checks the transport rule on lists: one remote
// gateway puts the whole list under TLS, and a token is never sent in
// plaintext to a list with a remote gateway.
func TestTLSRuleOverAList(t *testing.T) {
	tests := []struct {
		name, addr string
		opts       []Option
		wantTLS    bool
		wantErr    error
	}{
		{name: "all loopback: plaintext", addr: "127.0.0.1:1,[::1]:2,localhost:3", wantTLS: false},
		{name: "all loopback with a token: plaintext", addr: "127.0.0.1:1,127.0.0.2:2", opts: []Option{WithToken("t")}, wantTLS: false},
		{name: "all loopback asking for TLS", addr: "127.0.0.1:1,127.0.0.2:2", opts: []Option{WithTLSConfig(&tls.Config{})}, wantTLS: true},
		{name: "mixed: TLS to every gateway", addr: "127.0.0.1:1,farm.example:2", wantTLS: true},
		{name: "remote first: TLS", addr: "farm.example:2,127.0.0.1:1", opts: []Option{WithToken("t")}, wantTLS: true},
		{name: "mixed, plaintext asked for", addr: "127.0.0.1:1,farm.example:2", opts: []Option{WithInsecurePlaintext()}, wantTLS: false},
		{name: "mixed, plaintext with a token", addr: "127.0.0.1:1,farm.example:2", opts: []Option{WithInsecurePlaintext(), WithToken("t")}, wantErr: ErrPlaintextToken},
		{name: "loopback list, plaintext with a token", addr: "127.0.0.1:1,127.0.0.2:2", opts: []Option{WithInsecurePlaintext(), WithToken("t")}, wantTLS: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaultOptions()
			for _, opt := range tt.opts {
				opt(&o)
			}
			g, err := parseGateways(tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			useTLS, err := o.useTLS(g)
			if !errors.Is(err, tt.wantErr) || (err == nil && useTLS != tt.wantTLS) {
				t.Fatalf("useTLS = %v, %v; want %v, %v", useTLS, err, tt.wantTLS, tt.wantErr)
			}
			if _, err := Dial(t.Context(), tt.addr, tt.opts...); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Dial: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestTokenNeverInPlaintextToAMixedList dials a list of a loopback and a
// remote gateway, both routed to a local recorder, with a token: the client
// speaks TLS to both, the loopback one included, and the token never
// reaches the wire.
func TestTokenNeverInPlaintextToAMixedList(t *testing.T) {
	const token = "kiln_supersecrettokenvalue"
	rl := startRecorder(t)
	dialled := make(chan string, 16)
	redirect := WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		select {
		case dialled <- addr:
		default:
		}
		return (&net.Dialer{}).DialContext(ctx, "tcp", rl.Addr().String())
	}))

	c, err := Dial(t.Context(), "127.0.0.1:7700,farm.example.com:7700", WithToken(token), redirect)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The recorder speaks no TLS: every gateway of the list fails, and
	// the error names them.
	_, err = c.Get(t.Context(), "b")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "gateways tried: 127.0.0.1:7700, farm.example.com:7700") {
		t.Fatalf("Get against a recorder: %v, want Unavailable naming both gateways", err)
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		seen[<-dialled] = true
	}
	if !seen["127.0.0.1:7700"] || !seen["farm.example.com:7700"] {
		t.Fatalf("dialled %v, want both gateways", seen)
	}
	rl.mu.Lock()
	got := rl.buf.Bytes()
	rl.mu.Unlock()
	if len(got) == 0 || got[0] != 0x16 {
		t.Fatalf("client sent %q, want a TLS ClientHello", got[:min(len(got), 32)])
	}
	if bytes.Contains(got, []byte(token)) {
		t.Fatal("the token reached the wire in plaintext")
	}
}
