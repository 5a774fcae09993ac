package cli

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/kilnbuild/kiln/proto/rules/sshid"
)

// writeKey writes a new ed25519 private key as ssh-keygen does (encrypted
// with passphrase when it is set) and returns its path and its PEM.
func writeKey(t *testing.T, dir, name, passphrase string) (string, []byte) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase != "" {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(k, "me@laptop", []byte(passphrase))
	} else {
		block, err = ssh.MarshalPrivateKey(k, "me@laptop")
	}
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(block)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func TestBuildSSHFlag(t *testing.T) {
	dir := contextDir(t)
	keys := t.TempDir()
	a, pemA := writeKey(t, keys, "id_a", "")
	b, pemB := writeKey(t, keys, "id_b", "")
	enc, pemEnc := writeKey(t, keys, "id_enc", "hunter2")
	sock := filepath.Join(keys, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	o, err := parseBuildArgs([]string{"--ssh", "default=" + a, "--ssh", "github=" + a + "," + b, "--ssh", "", dir}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.ssh) != 2 || !bytes.Equal(o.ssh["default"], pemA) || !bytes.Equal(o.ssh["github"], append(bytes.Clone(pemA), pemB...)) {
		t.Fatalf("--ssh gave ids %d: %q", len(o.ssh), keysOf(o.ssh))
	}
	if len(o.spec.GetSsh()) != 0 {
		t.Error("the spec holds ssh keys before the SDK sealed them")
	}
	o, err = parseBuildArgs([]string{"--ssh", "=" + b, dir}, envOf(nil))
	if err != nil || !bytes.Equal(o.ssh[sshid.DefaultID], pemB) {
		t.Fatalf("--ssh =KEY: %v, ids %q; want the key under %q as buildx", err, keysOf(o.ssh), sshid.DefaultID)
	}

	for name, tt := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"socket": {args: []string{"--ssh", "default=" + sock}, want: "--ssh default=" + sock + ": " + sock + " is a socket (an ssh-agent's): an ssh-agent never gives out its private keys, so kiln cannot forward it to the farm, which builds on another machine. Name the private key file instead, e.g. --ssh default=$HOME/.ssh/id_ed25519"},
		"SSH_AUTH_SOCK": {args: []string{"--ssh", "default"}, env: map[string]string{"SSH_AUTH_SOCK": sock},
			want: "--ssh default: " + sock + " is a socket (an ssh-agent's): an ssh-agent never gives out its private keys"},
		"no SSH_AUTH_SOCK": {args: []string{"--ssh", "github"},
			want: "--ssh github names no key file, and $SSH_AUTH_SOCK is not set (buildx would forward that ssh-agent, which kiln cannot do: the farm builds elsewhere): name the private key file, e.g. --ssh github=$HOME/.ssh/id_ed25519"},
		"encrypted":       {args: []string{"--ssh", "default=" + a + "," + enc}, want: "--ssh default: ssh key " + enc + " is encrypted with a passphrase, which nobody can type on the farm"},
		"public key":      {args: []string{"--ssh", "default=" + a + ".pub"}, want: "--ssh default: ssh key " + a + ".pub: no such file or directory"},
		"directory":       {args: []string{"--ssh", "default=" + keys}, want: "is a directory: name the private key file in it"},
		"bad id":          {args: []string{"--ssh", "me@host=" + a}, want: `invalid --ssh "me@host=` + a + `": ssh id "me@host" may hold only letters`},
		"twice":           {args: []string{"--ssh", "default=" + a, "--ssh", "default=" + b}, want: `ssh id "default" is given twice: give all its keys in one --ssh default=KEY[,KEY...]`},
		"classic builder": {args: []string{"--builder", "classic", "--ssh", "default=" + a}, want: "--ssh needs the BuildKit builder"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseBuildArgs(append(tt.args, dir), envOf(tt.env))
			if err == nil || ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("kiln build %v: %v (exit %d), want exit %d saying %q", tt.args, err, ExitCode(err), ExitUsage, tt.want)
			}
			for _, k := range [][]byte{pemA, pemEnc} {
				if strings.Contains(err.Error(), strings.Split(string(k), "\n")[1][:16]) {
					t.Errorf("the error quotes a key: %v", err)
				}
			}
		})
	}
}

func keysOf(m map[string][]byte) []string {
	var ids []string
	for id := range m {
		ids = append(ids, id)
	}
	return ids
}
