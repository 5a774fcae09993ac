package enginetest

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// registryStartTimeout bounds how long AuthRegistry waits for the registry
// to say it listens.
const registryStartTimeout = 30 * time.Second

// AuthRegistry starts a registry of its own for the test: Debian's
// docker-registry (installed by `make dev-env`) on a free loopback port,
// storing in a temporary directory and accepting only user with password
// over HTTP basic auth. It returns the registry's host:port; the registry is
// stopped when the test ends. The engine pushes to it as an insecure
// registry, as to every registry on 127.0.0.0/8.
func AuthRegistry(t testing.TB, user, password string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("enginetest: %v\ninstall it with `make dev-env`", err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	dir := t.TempDir()
	addr := freeLoopbackAddr(t)
	htpasswd := filepath.Join(dir, "htpasswd")
	config := filepath.Join(dir, "registry.yml")
	writeFile(t, htpasswd, fmt.Sprintf("%s:%s\n", user, hash))
	writeFile(t, config, fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
auth:
  htpasswd:
    realm: kiln-test
    path: %s
`, filepath.Join(dir, "data"), addr, htpasswd))

	cmd := exec.Command(bin, "serve", config)
	logs, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("enginetest: starting %s: %v", bin, err)
	}
	// One goroutine reads the registry's log for as long as it runs: it
	// reports when the registry listens, then drains the rest so the
	// registry never blocks on a full pipe. Cleanup kills the registry,
	// which ends the log, and waits for both.
	listening := make(chan struct{})
	drained := make(chan []string, 1)
	go func() {
		var head []string
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			line := sc.Text()
			if len(head) < 50 {
				head = append(head, line)
			}
			if strings.Contains(line, "listening on "+addr) {
				close(listening)
				break
			}
		}
		io.Copy(io.Discard, logs)
		drained <- head
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-drained
		cmd.Wait()
	})
	select {
	case <-listening:
	case head := <-drained:
		drained <- head // for Cleanup
		t.Fatalf("enginetest: docker-registry exited before listening on %s:\n%s", addr, strings.Join(head, "\n"))
	case <-time.After(registryStartTimeout):
		t.Fatalf("enginetest: docker-registry did not listen on %s within %v", addr, registryStartTimeout)
	}
	return addr
}

// UseDockerConfig points DOCKER_CONFIG, for the rest of the test, at a new
// directory whose config.json holds credentials for each registry host in
// auths (host → {user, password}). No auths gives an empty config.
func UseDockerConfig(t testing.TB, auths map[string][2]string) {
	t.Helper()
	entries := map[string]map[string]string{}
	for host, up := range auths {
		entries[host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(up[0] + ":" + up[1]))}
	}
	body, err := json.Marshal(map[string]any{"auths": entries})
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config.json"), string(body))
	t.Setenv("DOCKER_CONFIG", dir)
}

// freeLoopbackAddr returns a 127.0.0.1 port that was free a moment ago.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeFile(t testing.TB, name, body string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(body), 0o600); err != nil {
		t.Fatalf("enginetest: %v", err)
	}
}
