package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlaintextTokenToRemoteRefused: the CLI refuses to send a token in
// plaintext to a gateway that is not on this machine, for build and agents.
func TestPlaintextTokenToRemoteRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"build", "--gateway", "farm.example.com:7700", "--token", "kiln_x", "--insecure-plaintext", dir},
		{"agents", "--gateway", "farm.example.com:7700", "--token", "kiln_x", "--insecure-plaintext"},
		{"agents", "drain", "--gateway", "farm.example.com:7700", "--token", "kiln_x", "--insecure-plaintext", "builder-1"},
	} {
		var stderr bytes.Buffer
		a := &App{Stdout: &bytes.Buffer{}, Stderr: &stderr}
		if code := a.Run(context.Background(), args); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d; stderr %s", args, code, ExitUsage, stderr.String())
		}
		if !strings.Contains(stderr.String(), "refusing to send the token in plaintext") || strings.Contains(stderr.String(), "kiln_x") {
			t.Errorf("%v: stderr %q", args, stderr.String())
		}
	}
}

func TestConnectionFlags(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("kiln_fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		wantToken string
		wantErr   string
	}{
		{name: "token file", args: []string{"--token-file", tokenFile}, wantToken: "kiln_fromfile"},
		{name: "env token file", env: map[string]string{"KILN_TOKEN_FILE": tokenFile}, wantToken: "kiln_fromfile"},
		{name: "env token wins over env file", env: map[string]string{"KILN_TOKEN": "kiln_env", "KILN_TOKEN_FILE": tokenFile}, wantToken: "kiln_env"},
		{name: "flag over env", args: []string{"--token", "kiln_flag"}, env: map[string]string{"KILN_TOKEN": "kiln_env"}, wantToken: "kiln_flag"},
		{name: "both", args: []string{"--token", "a", "--token-file", tokenFile}, wantErr: "mutually exclusive"},
		{name: "cert without key", env: map[string]string{"KILN_TLS_CERT": "c.pem"}, wantErr: "--tls-cert and --tls-key"},
		{name: "plaintext and tls", args: []string{"--insecure-plaintext", "--tls-ca", "ca.pem"}, wantErr: "cannot be combined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			o, err := parseBuildArgs(append(tc.args, dir), env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.token != tc.wantToken {
				t.Fatalf("token %q, want %q", o.token, tc.wantToken)
			}
		})
	}
}
