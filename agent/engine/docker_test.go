package engine_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/versions"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

func TestInfo(t *testing.T) {
	d := enginetest.Docker(t)
	info, err := d.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", info)
	if info.ServerVersion == "" || info.APIVersion == "" || info.MaxAPIVersion == "" || info.StorageDriver == "" {
		t.Fatalf("Info misses a field: %+v", info)
	}
	if info.OS != "linux" {
		t.Fatalf("OS = %q, want linux", info.OS)
	}
	if !versions.LessThanOrEqualTo(info.APIVersion, info.MaxAPIVersion) {
		t.Fatalf("negotiated API %s, but the engine offers only up to %s", info.APIVersion, info.MaxAPIVersion)
	}
}

func TestEngineThatDoesNotAnswer(t *testing.T) {
	d, err := engine.NewDocker("unix://" + filepath.Join(t.TempDir(), "docker.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Info(t.Context()); err == nil {
		t.Fatal("Info succeeded without an engine")
	}
	_, err = d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{"Dockerfile": "FROM scratch\n"}), engine.BuildOptions{}, nil)
	var be *engine.BuildError
	if err == nil || errors.As(err, &be) {
		t.Fatalf("Build: %v, want an error that is not a *BuildError", err)
	}
	if _, _, err := d.Push(t.Context(), "127.0.0.1:5000/kiln-test/x:1", nil, nil); err == nil {
		t.Fatal("Push succeeded without an engine")
	}
	t.Logf("Build: %v", err)
}

func TestNewDockerRefusesRemoteEngineWithoutTLSVerification(t *testing.T) {
	certs := t.TempDir()
	writeClientCerts(t, certs)
	tests := []struct {
		name      string
		host      string
		env       map[string]string // DOCKER_* variables; unset when absent
		wantError string            // "" means accepted
	}{
		{name: "unix socket", host: "unix:///var/run/docker.sock"},
		{name: "loopback tcp", host: "tcp://127.0.0.1:2375"},
		{name: "localhost tcp", host: "tcp://localhost:2375"},
		{name: "ipv6 loopback tcp", host: "tcp://[::1]:2375"},
		{name: "environment, default socket", host: ""},
		{name: "remote tcp without TLS", host: "tcp://192.0.2.10:2375", wantError: "TLS verification is off"},
		{name: "remote http without TLS", host: "http://192.0.2.10:2375", wantError: "TLS verification is off"},
		{name: "remote from DOCKER_HOST without TLS", host: "", env: map[string]string{"DOCKER_HOST": "tcp://192.0.2.10:2375"}, wantError: "TLS verification is off"},
		{name: "remote with certificates but no verification", host: "tcp://192.0.2.10:2376", env: map[string]string{"DOCKER_CERT_PATH": certs}, wantError: "TLS verification is off"},
		{name: "remote with verification but no certificates", host: "tcp://192.0.2.10:2376", env: map[string]string{"DOCKER_TLS_VERIFY": "1"}, wantError: "without DOCKER_CERT_PATH"},
		{name: "remote with verified TLS", host: "tcp://192.0.2.10:2376", env: map[string]string{"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": certs}},
		{name: "ssh", host: "ssh://builder@192.0.2.10", wantError: `scheme "ssh" is not supported`},
		{name: "garbage", host: "not a host", wantError: "not a host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"} {
				t.Setenv(k, tt.env[k])
			}
			d, err := engine.NewDocker(tt.host)
			if tt.wantError == "" {
				if err != nil {
					t.Fatalf("NewDocker(%q): %v", tt.host, err)
				}
				d.Close()
				return
			}
			if err == nil {
				d.Close()
				t.Fatalf("NewDocker(%q) accepted, want an error with %q", tt.host, tt.wantError)
			}
			if !strings.Contains(err.Error(), tt.wantError) {
				t.Fatalf("NewDocker(%q): %v, want an error with %q", tt.host, err, tt.wantError)
			}
		})
	}
}

// writeClientCerts writes ca.pem, cert.pem and key.pem as DOCKER_CERT_PATH
// expects them: a self-signed certificate that is its own CA.
func writeClientCerts(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kiln engine test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for name, body := range map[string][]byte{
		"ca.pem":   cert,
		"cert.pem": cert,
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
