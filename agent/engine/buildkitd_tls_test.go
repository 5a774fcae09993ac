package engine_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestBuildKitdOverMutualTLS reaches a buildkitd listening on tcp with
// mutual TLS (as a remote one would): with the CA and a client
// certificate it answers; without the client certificate, or trusting
// another CA, it does not.
func TestBuildKitdOverMutualTLS(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "kiln-bktls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca, caKey := newCA(t, dir, "ca")
	newLeaf(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	newLeaf(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	newCA(t, dir, "other-ca")

	bin, err := enginetest.BuildKitBin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostport := l.Addr().String()
	l.Close()
	logf, err := os.Create(filepath.Join(dir, "buildkitd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := func(name string) string { return filepath.Join(dir, name) }
	cmd := exec.Command(filepath.Join(bin, "buildkitd"), "--root", p("root"), "--addr", "tcp://"+hostport,
		"--tlscacert", p("ca.pem"), "--tlscert", p("server.pem"), "--tlskey", p("server-key.pem"),
		"--oci-worker=true", "--containerd-worker=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})

	good := engine.TLSConfig{CACert: p("ca.pem"), Cert: p("client.pem"), Key: p("client-key.pem")}
	bk, err := engine.NewBuildKitd(t.Context(), "tcp://"+hostport, good)
	if err != nil {
		t.Fatal(err)
	}
	defer bk.Close()
	var info engine.Info
	waitFor(t, "buildkitd to answer over TLS", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(p("buildkitd.log"))
			t.Fatalf("buildkitd exited:\n%s", b)
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		info, err = bk.Info(ctx)
		return err == nil
	})
	if info.Kind != engine.KindBuildKit || info.StorageDriver == "" {
		t.Fatalf("info over TLS: %+v", info)
	}

	for name, tls := range map[string]engine.TLSConfig{
		"no client certificate": {CACert: p("ca.pem")},
		"another CA":            {CACert: p("other-ca.pem"), Cert: p("client.pem"), Key: p("client-key.pem")},
		"another server name":   {CACert: p("ca.pem"), Cert: p("client.pem"), Key: p("client-key.pem"), ServerName: "elsewhere.example"},
	} {
		bad, err := engine.NewBuildKitd(t.Context(), "tcp://"+hostport, tls)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err = bad.Info(ctx)
		cancel()
		bad.Close()
		if err == nil {
			t.Fatalf("%s: the daemon answered", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

// newCA writes name.pem, a self-signed CA certificate, and returns it
// with its key.
func newCA(t *testing.T, dir, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newLeaf writes name.pem and name-key.pem, a certificate for 127.0.0.1
// signed by ca.
func newLeaf(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kiln test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, name, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
