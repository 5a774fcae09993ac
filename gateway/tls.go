package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

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
	fs.StringVar(&t.Cert, "tls-cert", "", "PEM certificate (chain) for the gRPC listener; with --tls-key serves TLS. Re-read on SIGHUP")
	fs.StringVar(&t.Key, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&t.ClientCA, "tls-client-ca", "", "PEM CA certificates; clients must present a certificate they signed (mutual TLS). Re-read on SIGHUP")
}

// Enabled reports whether TLS is configured.
func (t TLSFlags) Enabled() bool { return t.Cert != "" || t.Key != "" }

// ServerTLS is the TLS a listener serves: the certificate and client CAs
// of TLSFlags, which Reload re-reads (new connections get them; open ones
// keep theirs).
type ServerTLS struct {
	flags TLSFlags
	cfg   atomic.Pointer[tls.Config]
}

// Server loads the files; nil (and no error) when TLS is not configured.
func (t TLSFlags) Server() (*ServerTLS, error) {
	if !t.Enabled() {
		if t.ClientCA != "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if t.Cert == "" || t.Key == "" {
		return nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	s := &ServerTLS{flags: t}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// ServerOptions returns the gRPC server option that serves s; nil for a
// nil s (plaintext).
func (s *ServerTLS) ServerOptions() []grpc.ServerOption {
	if s == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.cfg.Load(), nil },
	}))}
}

// Reload re-reads the certificate, key and client CAs; on error the ones
// in use stay.
func (s *ServerTLS) Reload() error {
	t := s.flags
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", t.Cert, t.Key, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return fmt.Errorf("read TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("TLS client CA %s holds no PEM certificate", t.ClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	s.cfg.Store(cfg)
	return nil
}

// ReloadOnSIGHUP re-reads the certificate, key and client CAs on every
// SIGHUP until ctx ends; files that do not load leave the ones in use and
// are logged. A nil s does nothing.
func (s *ServerTLS) ReloadOnSIGHUP(ctx context.Context, log *slog.Logger) {
	if s == nil {
		return
	}
	onSIGHUP(ctx, func() {
		if err := s.Reload(); err != nil {
			log.Error("TLS certificate not reloaded: keeping the one in use", "err", err)
			return
		}
		log.Info("TLS certificate reloaded", "cert", s.flags.Cert, "client_ca", s.flags.ClientCA)
	})
}
