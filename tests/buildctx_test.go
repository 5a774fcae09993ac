package tests

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestBuildContexts: --build-context on a standalone buildkitd farm — a
// local directory replaces a stage (COPY --from=base), an image replaces a
// FROM (docker-image://) — and a Docker-engine farm refuses them, saying
// which agents can.
func TestBuildContexts(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	k := startKilndOnBuildKitd(t, bk, "buildkit://"+strings.TrimPrefix(bk.Addr, "unix://"))
	n := uniq()

	// A local named context replaces the stage of the same name: the
	// stage would write "from-stage", the context holds "from-context".
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + " AS base\nRUN echo from-stage > /which\n" +
		"FROM " + base + "\nCOPY --from=base /which /which\nRUN echo " + n + " && cat /which && grep -qx from-context /which\n"})
	extra := writeContext(t, map[string]string{"which": "from-context\n", "ignored.log": "x", ".dockerignore": "*.log\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--build-context", "base="+extra, dir)
	if r.code != 0 {
		t.Fatalf("build with --build-context base=DIR: %s", r)
	}

	// An image context replaces a FROM naming an image no registry has.
	dir = writeContext(t, map[string]string{"Dockerfile": "FROM kiln-e2e-nowhere/base:" + n + "\nRUN test -x /bin/busybox && echo image-context-" + n + "\n"})
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--build-context", "kiln-e2e-nowhere/base:"+n+"=docker-image://"+base, dir)
	if r.code != 0 {
		t.Fatalf("build with --build-context NAME=docker-image://: %s", r)
	}
	mustContain(t, r.stdout+r.stderr, "image-context-"+n, "the build's log")

	// A farm of Docker engines cannot take them: refused before queuing.
	r = kiln(t, sharedKilnd(t).addrs.GRPC, "build", "--build-context", "base="+extra, dir)
	if r.code == 0 || !strings.Contains(r.stderr, "--build-context needs an agent whose engine resolves named contexts") {
		t.Fatalf("--build-context on Docker agents: want a refusal naming the engines that can: %s", r)
	}
}

// TestGitURLContext: kiln build https://…/repo.git#ref:subdir builds the
// subdirectory at the ref, fetched by the agent from a token-protected
// smart-HTTP server (git http-backend) with the sealed
// GIT_AUTH_TOKEN.<host> secret; without the token it fails saying so, and
// the token reaches no output.
func TestGitURLContext(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	token := "ghp-" + uniq() + uniq()
	n := uniq()
	repo := gitRepo(t, map[string]string{
		"app/Dockerfile": "FROM " + base + "\nCOPY hello /hello\nRUN echo " + n + " && grep -qx from-main /hello && echo git-context-ok\n",
		"app/hello":      "from-main\n",
	})
	url := serveGit(t, filepath.Dir(repo), token) + "/" + filepath.Base(repo) + "#main:app"

	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", url)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "git context") {
		t.Fatalf("a private repository without its token: want the fetch to fail: %s", r)
	}

	t.Setenv("KILN_E2E_GIT_TOKEN", token)
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--secret", "id=GIT_AUTH_TOKEN.127.0.0.1,env=KILN_E2E_GIT_TOKEN", url)
	if r.code != 0 {
		t.Fatalf("build of a Git URL context with its token: %s", r)
	}
	mustContain(t, r.stdout+r.stderr, "git-context-ok", "the build's log")
	if strings.Contains(r.stdout+r.stderr, token) {
		t.Fatalf("the token is in the build's output: %s", r)
	}
	k.mustNotHold(t, "the git token", token)

	r = kiln(t, k.addrs.GRPC, "build", "http://x-access-token:"+token+"@127.0.0.1:1/r.git")
	if r.code != 2 || !strings.Contains(r.stderr, "--secret id=GIT_AUTH_TOKEN.127.0.0.1") || strings.Contains(r.stderr, token) {
		t.Fatalf("a token in the URL: want a usage error pointing at --secret, without the token: %s", r)
	}
}

// gitRepo makes a bare repository whose branch main holds files, and
// returns its directory ("<tmp>/repo.git").
func gitRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	work := writeContext(t, files)
	bare := filepath.Join(t.TempDir(), "repo.git")
	env := append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=kiln", "GIT_AUTHOR_EMAIL=kiln@example.com", "GIT_COMMITTER_NAME=kiln", "GIT_COMMITTER_EMAIL=kiln@example.com")
	for _, args := range [][]string{
		{"-C", work, "init", "-q", "-b", "main"},
		{"-C", work, "add", "-A"},
		{"-C", work, "commit", "-q", "-m", "context"},
		{"clone", "-q", "--bare", work, bare},
	} {
		cmd := exec.Command("git", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return bare
}

// serveGit serves the repositories under root over git's smart HTTP
// protocol on a loopback port, to requests with the token as basic auth
// the way BuildKit sends GIT_AUTH_TOKEN (x-access-token:TOKEN), and
// returns its base URL.
func serveGit(t *testing.T, root, token string) string {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatalf("git --exec-path: %v", err)
	}
	backend := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"},
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+token))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln-e2e"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close(); <-served })
	return fmt.Sprintf("http://%s", lis.Addr())
}
