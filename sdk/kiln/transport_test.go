package kiln

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
)

func TestIsLocalAddress(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7700": true, "localhost:7700": true, "[::1]:7700": true, "127.8.9.10:1": true,
		"dns:///localhost:7700": true, "unix:///run/kiln.sock": true, "passthrough:///127.0.0.1:7700": true,
		"10.0.0.5:7700": false, "farm.example.com:7700": false, "dns:///farm.example.com:443": false,
		"0.0.0.0:7700": false, "localhost.evil.com:7700": false,
	} {
		if got := IsLocalAddress(addr); got != want {
			t.Errorf("IsLocalAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}

// recordingListener accepts connections, keeps the first bytes each client
// sends, then hangs up.
type recordingListener struct {
	net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

// startRecorder listens on a free loopback port and records what every
// connection to it sends, until the test ends.
func startRecorder(t *testing.T) *recordingListener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: lis}
	t.Cleanup(func() { lis.Close() })
	go rl.serve()
	return rl
}

func (l *recordingListener) serve() {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b := make([]byte, 4096)
			for {
				n, err := c.Read(b)
				l.mu.Lock()
				l.buf.Write(b[:n])
				enough := l.buf.Len() >= 64
				l.mu.Unlock()
				if err != nil || enough {
					return
				}
			}
		}()
	}
}

// TestTokenNeverInPlaintextToRemote dials a gateway named by a
// non-loopback address (routed to a local recorder): with a token and
// plaintext asked for, Dial refuses; by default the client speaks TLS,
// and the recorder never sees the token.
func TestTokenNeverInPlaintextToRemote(t *testing.T) {
	const token = "kiln_supersecrettokenvalue"
	rl := startRecorder(t)
	redirect := WithDialOptions(grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", rl.Addr().String())
	}))

	if _, err := Dial(t.Context(), "passthrough:///farm.example.com:7700", WithToken(token), WithInsecurePlaintext(), redirect); !errors.Is(err, ErrPlaintextToken) {
		t.Fatalf("Dial with a token in plaintext to a remote gateway: %v, want ErrPlaintextToken", err)
	}

	c, err := Dial(t.Context(), "passthrough:///farm.example.com:7700", WithToken(token), redirect)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The recorder speaks no TLS, so the call fails; what matters is what
	// reached the wire.
	if _, err := c.Get(t.Context(), "b"); err == nil {
		t.Fatal("Get succeeded against a recorder")
	}
	rl.mu.Lock()
	got := rl.buf.Bytes()
	rl.mu.Unlock()
	if len(got) == 0 || got[0] != 0x16 { // a TLS handshake record
		t.Fatalf("client sent %q, want a TLS ClientHello", got[:min(len(got), 32)])
	}
	if bytes.Contains(got, []byte(token)) {
		t.Fatal("the token reached the wire in plaintext")
	}
	// A gateway on this machine may be reached in plaintext with a token.
	if _, err := Dial(t.Context(), "127.0.0.1:7700", WithToken(token)); err != nil {
		t.Fatalf("loopback plaintext with token: %v", err)
	}
	if !(bearerToken{token: token, requireTLS: true}).RequireTransportSecurity() {
		t.Fatal("bearer token to a remote gateway does not require transport security")
	}
}
