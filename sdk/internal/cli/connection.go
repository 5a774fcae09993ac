package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/sdk/kiln"
)

// connFlags are how a command reaches the gateway: its address, the
// tenant's token and TLS. Every command that talks to the farm takes them.
type connFlags struct {
	gateway, token, tokenFile string
	tlsCA, tlsCert, tlsKey    string
	insecurePlaintext         bool
}

// register adds the connection flags to fs.
func (f *connFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.gateway, "gateway", "", fmt.Sprintf("Address of the kiln gateway (host:port or dns:///name:port), or a comma-separated list of gateways to fail over between; env KILN_GATEWAY (default %q)", DefaultGateway))
	fs.StringVar(&f.token, "token", "", "Bearer token for the kiln gateway; env KILN_TOKEN")
	fs.StringVar(&f.tokenFile, "token-file", "", "File holding the bearer token; env KILN_TOKEN_FILE")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "PEM CA certificates that verify the gateway (default: the system's); env KILN_TLS_CA")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM client certificate, for a gateway that requires mutual TLS; env KILN_TLS_CERT")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert; env KILN_TLS_KEY")
	fs.BoolVar(&f.insecurePlaintext, "insecure-plaintext", false, "Talk to a gateway that is not on this machine without TLS (never with a token). TLS is the default except for loopback addresses")
}

// connection is a resolved connFlags.
type connection struct {
	gateway string
	token   string
	opts    []kiln.Option
}

// resolve reads the flags, then the environment, into the gateway address
// and the Dial options. The token comes from --token, --token-file,
// KILN_TOKEN or KILN_TOKEN_FILE, in that order.
func (f *connFlags) resolve(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) (connection, error) {
	c := connection{gateway: flagOrEnv(fs, "gateway", f.gateway, "KILN_GATEWAY", lookupEnv)}
	if c.gateway == "" {
		c.gateway = DefaultGateway
	}
	switch {
	case fs.Changed("token") && fs.Changed("token-file"):
		return connection{}, &usageError{msg: "--token and --token-file are mutually exclusive"}
	case fs.Changed("token"):
		c.token = f.token
	case fs.Changed("token-file"):
		t, err := readTokenFile(f.tokenFile)
		if err != nil {
			return connection{}, err
		}
		c.token = t
	default:
		if t, ok := lookupEnv("KILN_TOKEN"); ok && t != "" {
			c.token = t
		} else if p, ok := lookupEnv("KILN_TOKEN_FILE"); ok && p != "" {
			t, err := readTokenFile(p)
			if err != nil {
				return connection{}, err
			}
			c.token = t
		}
	}
	files := kiln.TLSFiles{
		CA:   flagOrEnv(fs, "tls-ca", f.tlsCA, "KILN_TLS_CA", lookupEnv),
		Cert: flagOrEnv(fs, "tls-cert", f.tlsCert, "KILN_TLS_CERT", lookupEnv),
		Key:  flagOrEnv(fs, "tls-key", f.tlsKey, "KILN_TLS_KEY", lookupEnv),
	}
	if (files.Cert == "") != (files.Key == "") {
		return connection{}, &usageError{msg: "--tls-cert and --tls-key go together"}
	}
	if f.insecurePlaintext && (files != kiln.TLSFiles{}) {
		return connection{}, &usageError{msg: "--insecure-plaintext cannot be combined with --tls-ca, --tls-cert or --tls-key"}
	}
	if (files != kiln.TLSFiles{}) {
		c.opts = append(c.opts, kiln.WithTLSFiles(files))
	}
	if f.insecurePlaintext {
		c.opts = append(c.opts, kiln.WithInsecurePlaintext())
	}
	if c.token != "" {
		c.opts = append(c.opts, kiln.WithToken(c.token))
	}
	// The SDK's rules, checked before any work: the address, and never a
	// token in plaintext to a gateway that is not on this machine.
	if err := kiln.CheckDial(c.gateway, c.opts...); err != nil {
		return connection{}, &usageError{msg: err.Error()}
	}
	return c, nil
}

// readTokenFile reads a token from a file, without surrounding whitespace.
func readTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if t == "" || strings.ContainsAny(t, "\r\n") {
		return "", fmt.Errorf("token file %s must hold one token on one line", path)
	}
	return t, nil
}

// dial resolves command cmd's connection flags and dials the farm. A flag
// mistake is a usage error and a failed dial a farm error about build id
// ("" for none), reported on stderr: then it returns a nil client and the
// exit code. The caller closes the client.
func (a *App) dial(ctx context.Context, cmd string, fs *pflag.FlagSet, cf *connFlags, id string) (*kiln.Client, connection, int) {
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return nil, conn, a.usageErrorf(cmd, "%v", err)
	}
	client, err := kiln.Dial(ctx, conn.gateway, conn.opts...)
	if err != nil {
		return nil, conn, reportFarmError(a.Stderr, conn.gateway, id, err)
	}
	return client, conn, ExitOK
}
