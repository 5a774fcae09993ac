package engine_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// buildKitEngine is what both engine kinds offer for a BuildKit build.
type buildKitEngine interface {
	BuildKit(ctx context.Context, o engine.BuildKitOptions, r engine.Reporter) (engine.BuildKitResult, error)
}

// TestBuildKitServesSSHKeys: on both engine kinds, a RUN --mount=type=ssh
// step reaches the build's keys through the session's agent (lists them,
// signs with them, cannot remove them). A build without SSH fails a step
// whose ssh mount is required as docker build without --ssh does, and a
// step requiring an id the build did not send fails as buildx's does (a
// mount not required is left out: the step runs without SSH_AUTH_SOCK).
func TestBuildKitServesSSHKeys(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	keyring := sshagent.NewKeyring()
	if err := keyring.Add(sshagent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	lister, err := os.ReadFile(enginetest.SSHLister(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}

	for name, e := range map[string]func(t *testing.T) buildKitEngine{
		"docker":    func(*testing.T) buildKitEngine { return enginetest.Docker(t) },
		"buildkitd": func(t *testing.T) buildKitEngine { return startBuildKitd(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			eng := e(t)
			n := nonce()
			build := func(t *testing.T, mount string, keys map[string]sshagent.Agent) ([]string, error) {
				dir := t.TempDir()
				writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nCOPY sshlister /sshlister\nRUN --mount=%s /sshlister && echo listed-%s\n", base, mount, n)})
				if err := os.WriteFile(filepath.Join(dir, "sshlister"), lister, 0o755); err != nil {
					t.Fatal(err)
				}
				var r recorder
				_, err := eng.BuildKit(t.Context(), engine.BuildKitOptions{
					ContextDir: dir, SharedKey: "kiln-test-ssh-" + n, SSH: keys,
					BuildOptions: engine.BuildOptions{NoCache: true},
				}, &r)
				return r.logs, err
			}

			logs, err := build(t, "type=ssh", map[string]sshagent.Agent{"default": keyring})
			if err != nil {
				t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(logs, "\n"))
			}
			for _, want := range []string{"3: " + authorized, "3: signed ssh-ed25519", "3: remove-all refused", "3: listed-" + n} {
				if !slices.Contains(logs, want) {
					t.Errorf("log lacks %q:\n%s", want, strings.Join(logs, "\n"))
				}
			}

			_, err = build(t, "type=ssh,required=true", nil)
			var be *engine.BuildError
			if !errors.As(err, &be) || be.Step != 3 || !strings.Contains(be.Message, `no SSH key "" forwarded from the client`) {
				t.Errorf("build without ssh keys: %v (%T), want a *BuildError at step 3 saying no SSH key was forwarded", err, err)
			}

			_, err = build(t, "type=ssh,id=github,required=true", map[string]sshagent.Agent{"default": keyring})
			if !errors.As(err, &be) || !strings.Contains(be.Message, "unset ssh forward key github") {
				t.Errorf("build asking for an id it was not sent: %v (%T), want a *BuildError saying the key is unset", err, err)
			}
		})
	}
}
