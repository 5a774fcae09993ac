package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// TestSSHOptions: the agent opens a build's sealed ssh keys into one
// keyring per ssh id, holding the keys the client read, masks the keys in
// the build's output beside its secrets, refuses keys sealed for another
// build or that do not parse naming the ssh id only, and leaves a build
// without ssh keys alone.
func TestSSHOptions(t *testing.T) {
	key, err := seal.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "agent-1", SecretsKey: key}}
	nonce, _ := seal.NewNonce()
	otherNonce, _ := seal.NewNonce()
	newKey := func() ([]byte, ssh.PublicKey) {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		block, err := ssh.MarshalPrivateKey(k, "")
		if err != nil {
			t.Fatal(err)
		}
		s, _ := ssh.NewSignerFromKey(k)
		return pem.EncodeToMemory(block), s.PublicKey()
	}
	pem1, pub1 := newKey()
	pem2, pub2 := newKey()
	sealed := func(n []byte, id string, value []byte) *kilnv1.SealedSecret {
		s, err := seal.Seal(key.PublicKey(), seal.Binding{Tenant: "team-a", Nonce: n, ID: id}, value)
		if err != nil {
			t.Fatal(err)
		}
		return &kilnv1.SealedSecret{Id: id, Sealed: s, KeyId: key.KeyID()}
	}
	build := func(n []byte, keys ...*kilnv1.SealedSecret) *kilnv1.Build {
		return &kilnv1.Build{Id: "b1", Tenant: "team-a", Spec: &kilnv1.BuildSpec{SealNonce: n, Ssh: keys}}
	}

	o := engine.BuildKitOptions{Secrets: map[string][]byte{"npm": []byte("npm-token-0123456789")}}
	rep := &reporter{}
	both := append(bytes.Clone(pem1), pem2...)
	if err := a.sshOptions(&o, build(nonce, sealed(nonce, "default", both), sealed(nonce, "github", pem2)), nil, rep); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string][]ssh.PublicKey{"default": {pub1, pub2}, "github": {pub2}} {
		listed, err := o.SSH[id].List()
		if err != nil || len(listed) != len(want) {
			t.Fatalf("ssh id %q lists %d keys (%v), want %d", id, len(listed), err, len(want))
		}
		for i, k := range listed {
			if !bytes.Equal(k.Marshal(), want[i].Marshal()) {
				t.Errorf("ssh id %q: key %d is another key", id, i+1)
			}
		}
	}
	line := strings.Split(string(pem1), "\n")[2]
	if got := rep.mask.line("cat key: " + line + " and npm-token-0123456789"); strings.Contains(got, line) || strings.Contains(got, "npm-token") {
		t.Errorf("the output masker lets the key or the secret through: %q", got)
	}

	untouched := engine.BuildKitOptions{}
	rep = &reporter{}
	if err := a.sshOptions(&untouched, build(nonce), nil, rep); err != nil || untouched.SSH != nil || rep.mask != nil {
		t.Errorf("a build without ssh keys: %v, SSH %v, masker %v; want nothing set", err, untouched.SSH, rep.mask)
	}

	for name, tt := range map[string]struct {
		b    *kilnv1.Build
		want string
	}{
		"copied into another build": {build(otherNonce, sealed(nonce, "default", pem1)), `sealed ssh key "default" was sealed for another build or tenant`},
		"not a key":                 {build(nonce, sealed(nonce, "default", []byte("ssh-ed25519 AAAA me@host"))), `ssh id "default": no private key`},
		"a key cut short":           {build(nonce, sealed(nonce, "default", pem1[:len(pem1)/2])), `ssh id "default": no private key`},
	} {
		t.Run(name, func(t *testing.T) {
			o := engine.BuildKitOptions{}
			err := a.sshOptions(&o, tt.b, nil, &reporter{})
			if err == nil || !strings.Contains(err.Error(), tt.want) || o.SSH != nil {
				t.Fatalf("sshOptions = %v (SSH %v), want an error containing %q and no keys", err, o.SSH, tt.want)
			}
			if strings.Contains(err.Error(), line[:16]) {
				t.Errorf("the error quotes the key: %v", err)
			}
		})
	}
}
