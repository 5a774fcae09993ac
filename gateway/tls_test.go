package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestTLSReload: a reload serves the new certificate to new connections;
// files that do not load leave the one in use.
func TestTLSReload(t *testing.T) {
	first, second := newPKI(t, "first"), newPKI(t, "second")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	copyFile := func(from, to string) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(first.serverCert, cert)
	copyFile(first.serverKeyPEM, key)
	srv, err := TLSFlags{Cert: cert, Key: key}.Server()
	if err != nil {
		t.Fatal(err)
	}
	f := startAuthFarm(t, srv.ServerOptions()...)
	trusting := func(p *pki) error {
		roots := x509.NewCertPool()
		roots.AddCert(p.ca)
		cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots})))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = kilnv1.NewBuildServiceClient(cc).ListBuilds(as(t.Context(), tokenA), &kilnv1.ListBuildsRequest{})
		return err
	}
	if err := trusting(first); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	copyFile(second.serverCert, cert)
	copyFile(second.serverKeyPEM, key)
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := trusting(second); err != nil {
		t.Fatalf("after the reload, the new certificate: %v", err)
	}
	if err := trusting(first); err == nil {
		t.Fatal("after the reload, the old certificate is still served")
	}
	if err := os.WriteFile(cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err == nil {
		t.Fatal("a broken certificate file reloaded")
	}
	if err := trusting(second); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}
}
