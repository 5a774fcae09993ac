package enginetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// SSHLister builds a small static program for Linux on the test machine's
// architecture into dir and returns its path there: a test copies it into
// an image to run as `RUN --mount=type=ssh /sshlister`. It speaks the
// ssh-agent protocol to $SSH_AUTH_SOCK and prints, for each identity the
// agent holds, the line `ssh-add -L` prints ("ssh-ed25519 AAAA... comment"),
// then "signed <type>" once the agent signed with it, and finally
// "remove-all refused" or "remove-all allowed" after asking the agent to
// drop every key. It exits 2 when there is no agent to reach and 3 when
// the agent holds no identity. Only the standard library: no module
// download.
func SSHLister(t testing.TB, dir string) string {
	t.Helper()
	src := t.TempDir()
	for name, body := range map[string]string{"go.mod": "module sshlister\n\ngo 1.22\n", "main.go": sshListerSource} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "sshlister")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("enginetest: build the ssh lister: %v\n%s", err, b)
	}
	return out
}

const sshListerSource = `package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
)

// The ssh-agent protocol (draft-miller-ssh-agent): a message is a uint32
// length and that many bytes, the first the message type.
const (
	agentFailure           = 5
	requestIdentities      = 11
	identitiesAnswer       = 12
	signRequest            = 13
	signResponse           = 14
	removeAllIdentities    = 19
)

func main() {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		fmt.Fprintln(os.Stderr, "sshlister: SSH_AUTH_SOCK is not set: no ssh agent")
		os.Exit(2)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sshlister:", err)
		os.Exit(2)
	}
	reply := call(c, []byte{requestIdentities})
	if reply[0] != identitiesAnswer {
		fail("identities: answer type %d", reply[0])
	}
	r := reply[1:]
	n := u32(&r)
	if n == 0 {
		fmt.Fprintln(os.Stderr, "sshlister: the agent has no identities")
		os.Exit(3)
	}
	for i := uint32(0); i < n; i++ {
		blob, comment := str(&r), str(&r)
		b := blob
		typ := string(str(&b))
		line := typ + " " + base64.StdEncoding.EncodeToString(blob)
		if len(comment) > 0 {
			line += " " + string(comment)
		}
		fmt.Println(line)
		req := []byte{signRequest}
		req = putStr(req, blob)
		req = putStr(req, []byte("kiln sshlister"))
		req = binary.BigEndian.AppendUint32(req, 0)
		if s := call(c, req); s[0] == signResponse {
			fmt.Printf("signed %s\n", typ)
		} else {
			fmt.Printf("sign refused %s (%d)\n", typ, s[0])
		}
	}
	if s := call(c, []byte{removeAllIdentities}); s[0] == agentFailure {
		fmt.Println("remove-all refused")
	} else {
		fmt.Println("remove-all allowed")
	}
}

func call(c net.Conn, msg []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(msg)))
	if _, err := c.Write(append(out, msg...)); err != nil {
		fail("write: %v", err)
	}
	var l [4]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		fail("read: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint32(l[:]))
	if _, err := io.ReadFull(c, b); err != nil || len(b) == 0 {
		fail("read: %v", err)
	}
	return b
}

func u32(b *[]byte) uint32 {
	if len(*b) < 4 {
		fail("short message")
	}
	v := binary.BigEndian.Uint32(*b)
	*b = (*b)[4:]
	return v
}

func str(b *[]byte) []byte {
	n := u32(b)
	if uint32(len(*b)) < n {
		fail("short message")
	}
	s := (*b)[:n]
	*b = (*b)[n:]
	return s
}

func putStr(b, s []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sshlister: "+format+"\n", args...)
	os.Exit(1)
}
`
