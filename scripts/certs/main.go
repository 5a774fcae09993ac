// Command certs makes a local certificate authority and, signed by it, a
// server certificate for the gateway and a client certificate, for trying
// kiln's TLS and mutual TLS on one machine (`make certs`). A real farm
// uses certificates from its own CA.
//
//	go run ./scripts/certs [-dir certs] [-hosts 127.0.0.1,localhost] [-days 365]
//
// It writes ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem and
// client-key.pem into -dir (keys mode 0600) and refuses to overwrite.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	dir := flag.String("dir", "certs", "directory to write the certificates into")
	hosts := flag.String("hosts", "127.0.0.1,localhost", "comma-separated IPs and DNS names of the server certificate")
	days := flag.Int("days", 365, "validity in days")
	client := flag.String("client", "kiln-client", "common name of the client certificate")
	flag.Parse()
	if err := run(*dir, strings.Split(*hosts, ","), *client, time.Duration(*days)*24*time.Hour); err != nil {
		fmt.Fprintln(os.Stderr, "certs:", err)
		os.Exit(1)
	}
}

func run(dir string, hosts []string, clientName string, validity time.Duration) error {
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err == nil {
		return fmt.Errorf("%s already holds ca.pem: remove the directory to make new certificates", dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "kiln local CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePair(dir, "ca", caDER, caKey); err != nil {
		return err
	}
	server := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "kiln gateway"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(h); ip != nil {
			server.IPAddresses = append(server.IPAddresses, ip)
		} else if h != "" {
			server.DNSNames = append(server.DNSNames, h)
		}
	}
	if err := issue(dir, "server", server, ca, caKey); err != nil {
		return err
	}
	clientCert := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: clientName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(dir, "client", clientCert, ca, caKey); err != nil {
		return err
	}
	fmt.Printf("wrote %s/{ca,server,client}.pem and their -key.pem\n"+
		"  gateway: --tls-cert %[1]s/server.pem --tls-key %[1]s/server-key.pem [--tls-client-ca %[1]s/ca.pem]\n"+
		"  kiln:    --tls-ca %[1]s/ca.pem [--tls-cert %[1]s/client.pem --tls-key %[1]s/client-key.pem]\n", dir)
	return nil
}

func issue(dir, name string, tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("sign %s certificate: %w", name, err)
	}
	return writePair(dir, name, der, key)
}

func writePair(dir, name string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
