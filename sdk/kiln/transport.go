package kiln

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrPlaintextToken is returned by Dial for a token that would travel in
// plaintext to a gateway that is not on this machine.
var ErrPlaintextToken = errors.New("refusing to send the token in plaintext to a gateway that is not on this machine: use TLS (drop --insecure-plaintext; --tls-ca if the gateway's certificate is not signed by a CA this machine trusts)")

// TLSFiles name the PEM files of a TLS connection to the gateway.
type TLSFiles struct {
	// CA verifies the gateway's certificate; empty: the system's roots.
	CA string
	// Cert and Key are the client's certificate and key, for a gateway
	// that requires mutual TLS; both or neither.
	Cert, Key string
}

func (f TLSFiles) any() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// config loads the files into a TLS client configuration.
func (f TLSFiles) config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("read TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s holds no PEM certificate", f.CA)
		}
		cfg.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a TLS client certificate needs both --tls-cert and --tls-key")
	}
	if f.Cert != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("load TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// transport decides how Dial reaches the gateways: TLS unless every
// gateway is on this machine (a loopback address or a unix socket) and no
// TLS was asked for, or plaintext was asked for explicitly. A token is
// never sent in plaintext to a gateway elsewhere. A list is decided as a
// whole, by its strictest entry: one remote gateway makes the client speak
// TLS (and refuse a token in plaintext) to every gateway of the list.
func (o *options) transport(g gateways) ([]grpc.DialOption, error) {
	useTLS, err := o.useTLS(g)
	if err != nil {
		return nil, err
	}
	var opts []grpc.DialOption
	if useTLS {
		cfg := o.tlsConfig
		if cfg == nil {
			var err error
			if cfg, err = o.tlsFiles.config(); err != nil {
				return nil, err
			}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if o.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken{token: o.token, requireTLS: !g.local()}))
	}
	return opts, nil
}

// useTLS is the rule transport follows: whether to speak TLS to the
// gateways g, or the error to refuse them with.
func (o *options) useTLS(g gateways) (bool, error) {
	if o.plaintext && (o.tlsConfig != nil || o.tlsFiles.any()) {
		return false, errors.New("plaintext was asked for together with TLS settings: choose one")
	}
	local := g.local()
	useTLS := o.tlsConfig != nil || o.tlsFiles.any() || (!local && !o.plaintext)
	if o.token != "" && !useTLS && !local {
		return false, ErrPlaintextToken
	}
	return useTLS, nil
}

// IsLocalAddress reports whether a gateway address ("host:port", a gRPC
// target such as "dns:///host:port" or "unix:///path", or a list
// "a:7700,b:7700") is on this machine: a loopback IP, "localhost", or a
// unix socket. A list is local only when every entry is; an address Dial
// would refuse is not.
func IsLocalAddress(addr string) bool {
	g, err := parseGateways(addr)
	return err == nil && g.local()
}

// isLocalTarget reports whether one gRPC target is on this machine.
func isLocalTarget(addr string) bool {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unix-abstract:") {
		return true
	}
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
		if j := strings.IndexByte(addr, '/'); j >= 0 { // dns://authority/host:port
			addr = addr[j+1:]
		}
	} else if s, ok := strings.CutPrefix(addr, "dns:"); ok {
		addr = s
	} else if s, ok := strings.CutPrefix(addr, "passthrough:"); ok {
		addr = strings.TrimPrefix(s, "/")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
