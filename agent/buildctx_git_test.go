package agent

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
)

func TestGitAuthHeader(t *testing.T) {
	basic := func(tok string) string {
		return "basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+tok))
	}
	for _, tc := range []struct {
		name    string
		secrets map[string][]byte
		want    string
	}{
		{"none", map[string][]byte{"other": []byte("x")}, ""},
		{"bare token", map[string][]byte{"GIT_AUTH_TOKEN": []byte("t0\n")}, basic("t0")},
		{"host token over bare", map[string][]byte{"GIT_AUTH_TOKEN": []byte("t0"), "GIT_AUTH_TOKEN.git.example": []byte("t1")}, basic("t1")},
		{"host header over host token", map[string][]byte{"GIT_AUTH_TOKEN.git.example": []byte("t1"), "GIT_AUTH_HEADER.git.example": []byte("bearer b")}, "bearer b"},
		{"host token over bare header", map[string][]byte{"GIT_AUTH_HEADER": []byte("bearer b"), "GIT_AUTH_TOKEN.git.example": []byte("t1")}, basic("t1")},
		{"another host's token", map[string][]byte{"GIT_AUTH_TOKEN.elsewhere": []byte("t2")}, ""},
	} {
		if got := gitAuthHeader("git.example:8443", tc.secrets); got != tc.want {
			t.Errorf("%s: gitAuthHeader = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestGitFetch fetches a branch of a token-protected repository served by
// git http-backend: the checkout holds the branch's files and no .git;
// without the token, and with a wrong one, the fetch fails with a
// *engine.BuildError that never shows the header.
func TestGitFetch(t *testing.T) {
	root := t.TempDir()
	work := filepath.Join(root, "work")
	env := append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=k", "GIT_AUTHOR_EMAIL=k@example.com", "GIT_COMMITTER_NAME=k", "GIT_COMMITTER_EMAIL=k@example.com")
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	if err := os.MkdirAll(filepath.Join(work, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "app", "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("-C", work, "init", "-q", "-b", "main")
	git("-C", work, "add", "-A")
	git("-C", work, "commit", "-q", "-m", "one")
	git("-C", work, "checkout", "-q", "-b", "other")
	if err := os.WriteFile(filepath.Join(work, "other.txt"), []byte("other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("-C", work, "add", "-A")
	git("-C", work, "commit", "-q", "-m", "two")
	git("clone", "-q", "--bare", work, filepath.Join(root, "srv", "r.git"))

	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	backend := &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env: []string{"GIT_PROJECT_ROOT=" + filepath.Join(root, "srv"), "GIT_HTTP_EXPORT_ALL=1"}}
	token := "tok-secret-1234"
	header := gitAuthHeader("127.0.0.1", map[string][]byte{"GIT_AUTH_TOKEN.127.0.0.1": []byte(token)})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Authorization"), header) {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	defer srv.Close()

	u, err := gitctx.Parse(srv.URL + "/r.git#other")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "repo")
	commit, err := gitFetch(t.Context(), dir, u, header)
	if err != nil {
		t.Fatalf("gitFetch with the token: %v", err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(commit) {
		t.Fatalf("commit %q", commit)
	}
	if _, err := os.Stat(filepath.Join(dir, "other.txt")); err != nil {
		t.Fatalf("the checkout lacks the branch's file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the checkout keeps .git: %v", err)
	}

	for _, h := range []string{"", "basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:wrong-token"))} {
		_, err := gitFetch(t.Context(), filepath.Join(t.TempDir(), "repo"), u, h)
		var be *engine.BuildError
		if !errors.As(err, &be) || !strings.Contains(be.Message, "git context "+srv.URL+"/r.git#other: git fetch") {
			t.Fatalf("gitFetch with header %q: %v, want a BuildError naming the fetch", h, err)
		}
		if h != "" && (strings.Contains(err.Error(), h) || strings.Contains(err.Error(), "wrong-token")) {
			t.Fatalf("the error shows the credential: %v", err)
		}
	}
}
