package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestKilndRefusesPublicListenWithoutTenants: without a tenants file kilnd
// serves one local tenant with no token, so it must not listen beyond
// loopback.
func TestKilndRefusesPublicListenWithoutTenants(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:0", ":0"} {
		cmd := exec.Command(kilndBin, "--listen", listen, "--http-listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
			"--data-dir", t.TempDir())
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("kilnd --listen %s without --tenants-file started:\n%s", listen, out)
		}
		mustContain(t, string(out), "--tenants-file", "kilnd's refusal")
	}
}

// tenantsAdd runs `kilnd tenants add` and returns the token it prints.
func tenantsAdd(t *testing.T, file string, args ...string) string {
	t.Helper()
	cmd := exec.Command(kilndBin, append([]string{"tenants", "add"}, append(args, "--file", file)...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kilnd tenants add %v: %v\n%s", args, err, stderr.String())
	}
	token := strings.TrimSpace(stdout.String())
	if !strings.HasPrefix(token, "kiln_") || strings.Contains(token, "\n") {
		t.Fatalf("kilnd tenants add printed %q, want one kiln_ token", stdout.String())
	}
	return token
}

// TestSharedFarmTLSTokensAndRevocation runs kilnd as a shared farm would:
// a tenants file made with `kilnd tenants add`, certificates from `make
// certs`'s program, mutual TLS. The real CLI builds and pushes through it
// with a tenant's token; it is refused without the token, without a client
// certificate, and outside the tenant's namespace; a SIGHUP after the
// tenant's token is removed revokes it.
func TestSharedFarmTLSTokensAndRevocation(t *testing.T) {
	reg := enginetest.Registry(t)
	base := enginetest.BusyboxBase(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command("go", "run", "github.com/kilnbuild/kiln/scripts/certs", "-dir", certs).CombinedOutput(); err != nil {
		t.Fatalf("scripts/certs: %v\n%s", err, out)
	}
	file := filepath.Join(dir, "tenants.yaml")
	tokenA := tenantsAdd(t, file, "team-a", "--push", reg+"/kiln-e2e-team-a/*")
	tenantsAdd(t, file, "team-b", "--push", reg+"/kiln-e2e-team-b/*")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("tenants file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if data, _ := os.ReadFile(file); bytes.Contains(data, []byte(tokenA)) {
		t.Fatal("the tenants file holds a token in clear")
	}

	k, err := startKilnd(dir, "--tenants-file", file,
		"--tls-cert", filepath.Join(certs, "server.pem"), "--tls-key", filepath.Join(certs, "server-key.pem"),
		"--tls-client-ca", filepath.Join(certs, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	defer k.stop()
	mustContain(t, k.logs.String(), "multi-tenant: 2 tenants from "+file, "kilnd's log")

	tlsArgs := []string{"--tls-ca", filepath.Join(certs, "ca.pem"), "--tls-cert", filepath.Join(certs, "client.pem"), "--tls-key", filepath.Join(certs, "client-key.pem")}
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN echo shared-farm " + uniq() + " > /f\n"})
	ref := reg + "/kiln-e2e-team-a/app:" + uniq()
	build := func(token, ref string, extra ...string) result {
		args := append([]string{"build", "--progress", "plain", "--build-arg", "BASE=" + base, "-t", ref, "--push"}, extra...)
		if token != "" {
			args = append(args, "--token", token)
		}
		return kiln(t, k.addrs.GRPC, append(args, ctxDir)...)
	}

	if r := build(tokenA, ref, tlsArgs...); r.code != 0 {
		t.Fatalf("build with the tenant's token over mutual TLS: %s", r)
	}
	if d := enginetest.ManifestDigest(t, reg, "kiln-e2e-team-a/app", ref[strings.LastIndex(ref, ":")+1:]); d == "" {
		t.Fatal("image not pushed")
	}
	r := build("", ref, tlsArgs...)
	if r.code != 2 || !strings.Contains(r.stderr, "token") {
		t.Fatalf("build without a token: %s; want exit 2 asking for a token", r)
	}
	r = build(tokenA, reg+"/kiln-e2e-team-b/app:x", tlsArgs...)
	if r.code != 2 || !strings.Contains(r.stderr, "namespaces") {
		t.Fatalf("build into team-b's namespace with team-a's token: %s; want exit 2, PermissionDenied", r)
	}
	r = build(tokenA, ref, "--tls-ca", filepath.Join(certs, "ca.pem"))
	if r.code == 0 {
		t.Fatalf("build without a client certificate succeeded: %s", r)
	}
	r = build(tokenA, ref, "--insecure-plaintext")
	if r.code == 0 {
		t.Fatalf("plaintext build against a TLS gateway succeeded: %s", r)
	}
	if strings.Contains(k.logs.String(), tokenA) {
		t.Fatal("the token reached kilnd's log")
	}

	// Rotation then revocation: a new token for team-a, the old one's hash
	// removed from the file, SIGHUP.
	tokenA2 := tenantsAdd(t, file, "team-a")
	c := tlsClient(t, k.addrs.GRPC, certs)
	if _, err := c.ListBuilds(withToken(t, tokenA2), &kilnv1.ListBuildsRequest{}); err == nil {
		t.Fatal("the new token works before kilnd re-read the file")
	}
	removeFirstToken(t, file, "team-a")
	if err := k.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "kilnd to reload the tenants file", func() bool {
		return strings.Contains(k.logs.String(), "tenants file reloaded")
	})
	_, err = c.ListBuilds(withToken(t, tokenA), &kilnv1.ListBuildsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token after SIGHUP: %v, want Unauthenticated", err)
	}
	l, err := c.ListBuilds(withToken(t, tokenA2), &kilnv1.ListBuildsRequest{})
	if err != nil || len(l.Builds) != 1 {
		t.Fatalf("team-a's new token lists %v, %v; want team-a's one build", l.GetBuilds(), err)
	}
	if r := build(tokenA, ref, tlsArgs...); r.code != 2 || !strings.Contains(r.stderr, "token") {
		t.Fatalf("CLI with the revoked token: %s; want exit 2", r)
	}
	// A broken file keeps the tenants in force.
	if err := os.WriteFile(file, []byte("tenants: [{name: broken}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := k.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "kilnd to refuse the broken tenants file", func() bool {
		return strings.Contains(k.logs.String(), "tenants file not reloaded")
	})
	if _, err := c.ListBuilds(withToken(t, tokenA2), &kilnv1.ListBuildsRequest{}); err != nil {
		t.Fatalf("after a broken tenants file: %v", err)
	}
}

// tlsClient dials addr with the client certificate of certs.
func tlsClient(t *testing.T, addr, certs string) kilnv1.BuildServiceClient {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	kp, err := tls.LoadX509KeyPair(filepath.Join(certs, "client.pem"), filepath.Join(certs, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{kp}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return kilnv1.NewBuildServiceClient(cc)
}

func withToken(t *testing.T, token string) context.Context {
	return grpcmd.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
}

// removeFirstToken deletes the first token hash of tenant from the file
// (written by `kilnd tenants add`: one "- $…" line per hash).
func removeFirstToken(t *testing.T, file, tenant string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	in, removed := false, false
	var out []string
	for _, l := range lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "- name:") || strings.HasPrefix(trimmed, "name:") {
			in = strings.HasSuffix(trimmed, " "+tenant)
		}
		if in && !removed && strings.HasPrefix(trimmed, "- $") {
			removed = true
			continue
		}
		out = append(out, l)
	}
	if !removed {
		t.Fatalf("no token of %s in:\n%s", tenant, data)
	}
	if err := os.WriteFile(file, []byte(strings.Join(out, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}
