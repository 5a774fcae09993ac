package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
)

// A Git URL context (BuildSpec.git_context) is fetched by the agent, not
// by the engine: the agent must read the Dockerfile to check it against
// the tenant's policy (package policy) and serve the engine the checked
// copy, which a fetch inside the engine would hide from it. The fetch is
// shallow (the one commit), runs the host's git with no user or system
// configuration, over https, http or git only (submodules included), and
// authenticates with the build's sealed GIT_AUTH_HEADER[.host] or
// GIT_AUTH_TOKEN[.host] secret as BuildKit's Git source does. The
// checkout, without .git, is then the build's context directory.

// gitFetchTimeout bounds one Git URL context's fetch.
const gitFetchTimeout = 10 * time.Minute

// gitDir is a Git URL context fetched for one build: a temporary
// directory, removed on Release.
type gitDir struct {
	root, path, slot string
	once             sync.Once
}

func (d *gitDir) Path() string { return d.path }
func (d *gitDir) Slot() string { return d.slot }

// Release removes the checkout. It may be called more than once.
func (d *gitDir) Release() { d.once.Do(func() { _ = os.RemoveAll(d.root) }) }

// fetchGitContext fetches b's Git URL context into a temporary directory
// and returns its subdirectory. A failed fetch is a *engine.BuildError
// with git's message, the credential masked.
func (a *Agent) fetchGitContext(ctx context.Context, b *kilnv1.Build, ev *events) (_ buildDir, err error) {
	u, err := gitctx.Parse(b.GetSpec().GetGitContext())
	if err != nil {
		return nil, &engine.BuildError{Message: err.Error()}
	}
	secrets, err := a.openSecrets(b)
	if err != nil {
		return nil, err
	}
	header := gitAuthHeader(u.Host, secrets)
	root, err := os.MkdirTemp("", "kiln-git-")
	if err != nil {
		return nil, fmt.Errorf("git context: %w", err)
	}
	sum := sha256.Sum256([]byte(u.Remote + "#" + u.Ref))
	d := &gitDir{root: root, slot: "git-" + hex.EncodeToString(sum[:8])}
	defer func() {
		if err != nil {
			d.Release()
		}
	}()
	started := time.Now()
	fctx, span := startSpan(ctx, "context git fetch", b)
	commit, err := gitFetch(fctx, filepath.Join(root, "repo"), u, header)
	endSpan(span, err)
	if err != nil {
		return nil, err
	}
	d.path = filepath.Join(root, "repo")
	if u.Subdir != "" {
		d.path = filepath.Join(d.path, filepath.FromSlash(u.Subdir))
		resolved, err := filepath.EvalSymlinks(d.path)
		if err != nil || !strings.HasPrefix(resolved+string(filepath.Separator), filepath.Join(root, "repo")+string(filepath.Separator)) {
			return nil, &engine.BuildError{Message: fmt.Sprintf("git context %s: subdirectory %q is not a directory of the repository at %s", u.Remote, u.Subdir, commit)}
		}
		if fi, err := os.Stat(resolved); err != nil || !fi.IsDir() {
			return nil, &engine.BuildError{Message: fmt.Sprintf("git context %s: subdirectory %q is not a directory of the repository at %s", u.Remote, u.Subdir, commit)}
		}
		d.path = resolved
	}
	ev.internal("context: fetched %s at %s (commit %s) in %s", u.Remote, refOrHead(u.Ref), commit, time.Since(started).Round(time.Millisecond))
	ev.logger.InfoContext(ctx, "git context fetched", "remote", u.Remote, "ref", u.Ref, "commit", commit, "authenticated", header != "")
	return d, nil
}

func refOrHead(ref string) string {
	if ref == "" {
		return "HEAD"
	}
	return ref
}

// gitAuthHeader is the Authorization header for host from the build's
// secrets, as BuildKit's Git source picks it: GIT_AUTH_HEADER.<host>, then
// GIT_AUTH_TOKEN.<host> (sent as basic x-access-token:<token>), then the
// same without a host; "" when there is none.
func gitAuthHeader(host string, secrets map[string][]byte) string {
	headers, tokens := gitctx.SecretIDs(host)
	for i := range headers {
		if v := secrets[headers[i]]; len(v) > 0 {
			return strings.TrimSpace(string(v))
		}
		if v := secrets[tokens[i]]; len(v) > 0 {
			return "basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+strings.TrimSpace(string(v))))
		}
	}
	return ""
}

// gitFetch checks out u's ref (the remote's HEAD when it names none) into
// dir, shallow, with its submodules, drops .git, and returns the commit.
func gitFetch(ctx context.Context, dir string, u gitctx.URL, header string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, gitFetchTimeout)
	defer cancel()
	if _, err := exec.LookPath("git"); err != nil {
		return "", errors.New("a Git URL context needs git on the agent's host (apt-get install git)")
	}
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		cmd.Env = gitEnv(dir, u, header)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			msg := strings.TrimSpace(stderr.String())
			if header != "" {
				msg = strings.ReplaceAll(msg, header, "xxxxx")
			}
			if ctx.Err() != nil {
				msg = fmt.Sprintf("gave up after %s", gitFetchTimeout)
			}
			return "", &engine.BuildError{Message: fmt.Sprintf("git context %s: git %s: %s", u.String(), args[0], msg)}
		}
		return strings.TrimSpace(out.String()), nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("git context: %w", err)
	}
	ref := u.Ref
	if ref == "" {
		ref = "HEAD"
	}
	steps := [][]string{
		{"init", "-q"},
		{"fetch", "-q", "--depth=1", "--no-tags", "--recurse-submodules=no", "--", u.Remote, ref},
		{"-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"},
	}
	for _, args := range steps {
		if _, err := run(args...); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".gitmodules")); err == nil {
		if _, err := run("submodule", "update", "-q", "--init", "--recursive", "--depth=1"); err != nil {
			return "", err
		}
	}
	commit, err := run("rev-parse", "HEAD")
	if err != nil {
		return "", err
	}
	if err := os.RemoveAll(filepath.Join(dir, ".git")); err != nil {
		return "", fmt.Errorf("git context: %w", err)
	}
	return commit, nil
}

// gitEnv is git's environment for a fetch: no system or user
// configuration, no prompts, only the schemes gitctx allows (submodules
// too), and the Authorization header for the remote's host.
func gitEnv(dir string, u gitctx.URL, header string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=/bin/false",
		"SSH_ASKPASS=/bin/false",
		"GIT_ALLOW_PROTOCOL=https:http:git",
	}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	config := [][2]string{{"protocol.file.allow", "never"}}
	if header != "" {
		config = append(config, [2]string{"http." + u.Scheme + "://" + u.Host + "/.extraheader", "Authorization: " + header})
	}
	env = append(env, fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(config)))
	for i, kv := range config {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}
