package tests

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// sshDockerfile runs the test's ssh-add -L (enginetest.SSHLister) in a step
// that mounts the build's ssh agent.
const sshDockerfile = `FROM %s
COPY sshlister /sshlister
RUN --mount=type=ssh /sshlister
`

// TestSSH: kiln build --ssh default=KEY serves the key to the build's
// RUN --mount=type=ssh step through the farm (the step lists its public
// key and signs with it), and neither the private key nor its lines show
// in the output; the same build without --ssh has no ssh agent (the step
// fails, as under docker build); an ssh-agent socket is refused with exit
// 2 before anything is queued, showing the key-file form to use.
func TestSSH(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	keyPath, keyPEM, authorized := writeSSHKey(t)
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(sshDockerfile, base), "n": uniq()})
	enginetest.SSHLister(t, dir)

	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--no-cache", "--ssh", "default="+keyPath, dir)
	if r.code != 0 {
		t.Fatalf("build with --ssh failed: %s", r)
	}
	out := r.stdout + r.stderr
	mustContain(t, out, authorized, "the build's log (the step's ssh agent lists the key)")
	mustContain(t, out, "signed ssh-ed25519", "the build's log (the agent signs with the key)")
	mustContain(t, out, "remove-all refused", "the build's log (the agent is read-only)")
	for _, line := range strings.Split(strings.TrimSpace(keyPEM), "\n")[1:] {
		if len(line) >= 16 && strings.Contains(out, line) {
			t.Fatalf("the output holds a line of the private key: %s", r)
		}
	}

	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--no-cache", dir)
	// Docker's BuildKit sets SSH_AUTH_SOCK to a socket that is not there,
	// a buildkitd sets none: either way the lister finds no agent.
	if out := r.stdout + r.stderr; r.code == 0 || !strings.Contains(out, "failed at step 3") ||
		!strings.Contains(out, "sshlister: ") || strings.Contains(out, "signed ssh-ed25519") {
		t.Fatalf("the same build without --ssh: want its step to find no ssh agent and fail, got %s", r)
	}

	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--ssh", "default="+sock, dir)
	if r.code != 2 || !strings.Contains(r.stderr, sock+" is a socket (an ssh-agent's)") ||
		!strings.Contains(r.stderr, "--ssh default=$HOME/.ssh/id_ed25519") || strings.Contains(r.stderr, "queued") {
		t.Fatalf("--ssh naming an ssh-agent socket: want exit 2 before anything is queued, showing the key-file form, got %s", r)
	}
}

// writeSSHKey writes a new ed25519 private key (PKCS#8 PEM, which ssh and
// ssh-keygen read) and returns its path, its PEM and its public key's
// authorized_keys line, as ssh-add -L prints it.
func writeSSHKey(t *testing.T) (path, keyPEM, authorized string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	path = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	// The ssh wire form of an ed25519 public key: string "ssh-ed25519",
	// string key (RFC 8709).
	var blob []byte
	for _, s := range [][]byte{[]byte("ssh-ed25519"), pub} {
		blob = binary.BigEndian.AppendUint32(blob, uint32(len(s)))
		blob = append(blob, s...)
	}
	return path, keyPEM, "ssh-ed25519 " + base64.StdEncoding.EncodeToString(blob)
}
