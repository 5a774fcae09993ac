package kiln

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/sshid"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

// writeSSHKey writes a new ed25519 private key in OpenSSH format, as
// ssh-keygen does (encrypted when passphrase is set), and returns its path
// and the key's base64 body's first line.
func writeSSHKey(t *testing.T, dir, name, passphrase string) (path, body string) {
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
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, strings.Split(string(data), "\n")[1]
}

func TestReadSSHKeys(t *testing.T) {
	dir := t.TempDir()
	a, _ := writeSSHKey(t, dir, "id_a", "")
	b, _ := writeSSHKey(t, dir, "id_b", "")
	value, err := ReadSSHKeys(a, b)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sshid.Parse(value)
	if err != nil || len(keys) != 2 {
		t.Fatalf("ReadSSHKeys gave %d keys (%v), want 2", len(keys), err)
	}

	encrypted, encBody := writeSSHKey(t, dir, "id_encrypted", "hunter2")
	pub := filepath.Join(dir, "id_a.pub")
	if err := os.WriteFile(pub, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG me@laptop\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	for name, tt := range map[string]struct {
		paths []string
		is    error
		want  string
	}{
		"agent socket": {[]string{sock}, ErrSSHAgentSocket, "ssh key " + sock + " is a socket (an ssh-agent's?), and an ssh-agent never gives out its private keys, so kiln cannot send them to the farm: name the key file instead, e.g. --ssh default=$HOME/.ssh/id_ed25519"},
		"encrypted":    {[]string{a, encrypted}, ErrSSHKeyEncrypted, "ssh key " + encrypted + " is encrypted with a passphrase, which nobody can type on the farm: use a key without one (a deploy key), or a decrypted copy (cp KEY COPY && ssh-keygen -p -N '' -f COPY)"},
		"public key":   {[]string{pub}, sshid.ErrNoKey, "ssh key " + pub + " holds no private key in PEM or OpenSSH format (name the private key, not the .pub file)"},
		"directory":    {[]string{dir}, nil, "ssh key " + dir + " is a directory: name the private key file in it, e.g. " + dir + "/id_ed25519"},
		"missing":      {[]string{filepath.Join(dir, "nope")}, nil, "ssh key " + filepath.Join(dir, "nope") + ": no such file or directory"},
		"none":         {nil, nil, "no ssh key file given"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadSSHKeys(tt.paths...)
			if err == nil || err.Error() != tt.want || status.Code(err) != codes.InvalidArgument {
				t.Fatalf("ReadSSHKeys = %v (%s), want InvalidArgument %q", err, status.Code(err), tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error does not match %v", tt.is)
			}
			if strings.Contains(err.Error(), encBody[:16]) {
				t.Error("the error quotes the key")
			}
		})
	}
}

func TestBuildSealsSSHKeys(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithSecretsKey())
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	keyPath, body := writeSSHKey(t, t.TempDir(), "id", "")
	value, err := ReadSSHKeys(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := runBuild(t.Context(), client, BuildRequest{Context: pack(t, dir, ""), SSH: map[string][]byte{"default": value, "github": value}})
	if err != nil {
		t.Fatal(err)
	}
	got := b.GetSpec().GetSsh()
	if len(got) != 2 || got[0].GetId() != "default" || got[1].GetId() != "github" {
		t.Fatalf("sealed ssh keys %v, want default and github", got)
	}
	if len(b.GetSpec().GetSecrets()) != 0 || len(b.GetSpec().GetSealNonce()) == 0 {
		t.Errorf("spec has %d secrets and a %d-byte seal nonce, want none and one", len(b.GetSpec().GetSecrets()), len(b.GetSpec().GetSealNonce()))
	}
	for _, s := range got {
		if s.GetKeyId() != farm.SecretsKeyID() || bytes.Contains(s.GetSealed(), []byte(body[:16])) {
			t.Errorf("ssh id %q: sealed to %q (want %q), or in the clear", s.GetId(), s.GetKeyId(), farm.SecretsKeyID())
		}
		v, err := farm.OpenSecret(b, s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v, value) {
			t.Errorf("ssh id %q opened to other keys", s.GetId())
		}
	}
}

func TestBuildSSHKeysRefused(t *testing.T) {
	withKey := farmtest.Start(t, farmtest.WithSecretsKey())
	noKey := farmtest.Start(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	keyPath, body := writeSSHKey(t, t.TempDir(), "id", "")
	value, err := ReadSSHKeys(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		farm    *farmtest.Farm
		spec    *kilnv1.BuildSpec
		ssh     map[string][]byte
		code    codes.Code
		message string
	}{
		"bad id":           {withKey, nil, map[string][]byte{"me@host": value}, codes.InvalidArgument, `ssh id "me@host" may hold only`},
		"not keys":         {withKey, nil, map[string][]byte{"default": []byte("ssh-ed25519 AAAA")}, codes.InvalidArgument, `ssh id "default": no private key`},
		"classic builder":  {withKey, &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC}, map[string][]byte{"default": value}, codes.InvalidArgument, "need the BuildKit builder"},
		"id also in spec":  {withKey, &kilnv1.BuildSpec{Ssh: []*kilnv1.SealedSecret{{Id: "default"}}}, map[string][]byte{"default": value}, codes.InvalidArgument, `ssh id "default" is given twice`},
		"farm without key": {noKey, nil, map[string][]byte{"default": value}, codes.FailedPrecondition, "this farm has no secrets key configured"},
		"too large":        {withKey, nil, map[string][]byte{"a": bytes.Repeat(value, 200)}, codes.InvalidArgument, "over the limit of 65536 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			client := dial(t, tt.farm.Addr)
			before := len(tt.farm.Builds())
			_, err := runBuild(t.Context(), client, BuildRequest{Spec: tt.spec, Context: pack(t, dir, ""), SSH: tt.ssh})
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("Build = %v, want %s containing %q", err, tt.code, tt.message)
			}
			if strings.Contains(err.Error(), body[:16]) {
				t.Errorf("the error holds the key: %v", err)
			}
			if n := len(tt.farm.Builds()); n != before {
				t.Errorf("a build was started")
			}
		})
	}
}
