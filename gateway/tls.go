package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TLSFlags are the TLS settings of the gateway's gRPC listener.
type TLSFlags struct {
	// Cert and Key are PEM files of the server's certificate (chain) and
	// private key; both empty serves plaintext.
	Cert, Key string
	// ClientCA, if set, is a PEM file of the CAs whose client certificates
	// are accepted: every client must present one (mutual TLS).
	ClientCA string
}

// Flags registers --tls-cert, --tls-key and --tls-client-ca (each also
// read from KILN_<FLAG>).
func (t *TLSFlags) Flags(fs *flag.FlagSet) {
	fs.StringVar(&t.Cert, "tls-cert", "", "PEM certificate (chain) for the gRPC listener; with --tls-key serves TLS")
	fs.StringVar(&t.Key, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&t.ClientCA, "tls-client-ca", "", "PEM CA certificates; clients must present a certificate they signed (mutual TLS)")
}

// Enabled reports whether TLS is configured.
func (t TLSFlags) Enabled() bool { return t.Cert != "" || t.Key != "" }

// ServerOptions returns the gRPC server option that serves TLS, or none
// when TLS is not configured.
func (t TLSFlags) ServerOptions() ([]grpc.ServerOption, error) {
	cfg, err := t.Config()
	if err != nil || cfg == nil {
		return nil, err
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}, nil
}

// Config returns the TLS configuration, nil when TLS is not configured.
func (t TLSFlags) Config() (*tls.Config, error) {
	if !t.Enabled() {
		if t.ClientCA != "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if t.Cert == "" || t.Key == "" {
		return nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", t.Cert, t.Key, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("read TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS client CA %s holds no PEM certificate", t.ClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
