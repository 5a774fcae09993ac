package enginetest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDockerfileFrontend builds, on an engine of its own that has never seen
// the frontend, a Dockerfile that the engine's built-in frontend cannot parse
// (heredocs), with the frontend image from DockerfileFrontend: once named by
// `# syntax=`, once by --build-arg BUILDKIT_SYNTAX. The image must hold what
// the heredocs wrote, the outputs of two independent stages, a secret and the
// count of a cache mount that outlives the first build.
func TestDockerfileFrontend(t *testing.T) {
	reg := Registry(t)
	frontend := DockerfileFrontend(t, reg)
	if again := DockerfileFrontend(t, reg); again != frontend {
		t.Fatalf("second DockerfileFrontend = %q, want %q", again, frontend)
	}
	if want := reg + "/kiln/dockerfile:v"; !strings.HasPrefix(frontend, want) {
		t.Fatalf("DockerfileFrontend = %q, want %s…", frontend, want)
	}
	base := BusyboxBase(t) // in the registry too, for the engine's BuildKit
	cli := buildkitCLI(t)
	e := StartEngine(t, "frontend")

	n := strings.ToLower(rand.Text()[:12])
	body := fmt.Sprintf(`FROM %[1]s AS left
RUN <<EOT
set -e
mkdir -p /out
echo "left %[2]s" > /out/left
EOT

FROM %[1]s AS right
RUN echo "right %[2]s" > /right

FROM %[1]s
COPY <<EOF /etc/kiln-heredoc
heredoc %[2]s
second line
EOF
COPY --from=left /out/left /left
COPY --from=right /right /right
RUN --mount=type=secret,id=token,required=true cp /run/secrets/token /token
ARG ROUND
RUN --mount=type=cache,target=/cache,id=kiln-frontend-%[2]s echo "$ROUND" >> /cache/rounds && wc -l < /cache/rounds > /rounds
`, base, n)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "syntax.Dockerfile"), "# syntax="+frontend+"\n"+body)
	writeFile(t, filepath.Join(dir, "plain.Dockerfile"), body)
	secret := filepath.Join(t.TempDir(), "token")
	writeFile(t, secret, "token-"+n+"\n")

	resolved := regexp.MustCompile(`(?m)resolve image config for .*` + regexp.QuoteMeta(frontend) + `\s*$`)
	for i, c := range []struct {
		how, dockerfile string
		args            []string
	}{
		{"# syntax=", "syntax.Dockerfile", nil},
		{"BUILDKIT_SYNTAX", "plain.Dockerfile", []string{"--build-arg", "BUILDKIT_SYNTAX=" + frontend}},
	} {
		round := i + 1 // the cache mount has seen one build per round
		ok := t.Run(c.how, func(t *testing.T) {
			tag := fmt.Sprintf("kiln-test/frontend:%s-%d", n, round)
			args := []string{"build", "--progress=plain",
				"-f", filepath.Join(dir, c.dockerfile), "-t", tag,
				"--secret", "id=token,src=" + secret,
				"--build-arg", "ROUND=" + strconv.Itoa(round)}
			args = append(append(args, c.args...), dir)
			out := buildkitBuild(t, cli, e, args...)
			if !resolved.MatchString(out) {
				t.Fatalf("the build did not resolve %s: its frontend was not used\n%s", frontend, out)
			}
			got := runContainer(t, e, tag, "cat /etc/kiln-heredoc /left /right /token /rounds")
			want := fmt.Sprintf("heredoc %[1]s\nsecond line\nleft %[1]s\nright %[1]s\ntoken-%[1]s\n%d\n", n, round)
			if got != want {
				t.Fatalf("image %s holds:\n%s\nwant:\n%s\nbuild output:\n%s", tag, got, want, out)
			}
		})
		if !ok {
			break // the next round counts on this one's cache mount
		}
	}
}

// buildkitBuild runs `CLI args…` with BuildKit against e and returns its
// output; it fails the test if the build fails.
func buildkitBuild(t *testing.T, cli string, e *Engine, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host, "DOCKER_BUILDKIT=1")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("DOCKER_BUILDKIT=1 %s %s: %v\n%s\nengine log:\n%s", cli, strings.Join(args, " "), err, out, e.logTail(30))
	}
	return string(out)
}

// buildkitCLI returns a docker CLI that builds with the engine's BuildKit
// when DOCKER_BUILDKIT=1 (with sessions, so --secret and external
// frontends work): $KILN_BUILDKIT_DOCKER if set, else the first of
// /usr/bin/docker (Debian's docker.io) and the docker on PATH that either
// predates 23.0 (BuildKit built in) or has the buildx plugin.
func buildkitCLI(t testing.TB) string {
	t.Helper()
	var candidates []string
	if c := os.Getenv("KILN_BUILDKIT_DOCKER"); c != "" {
		candidates = append(candidates, c)
	} else {
		candidates = append(candidates, "/usr/bin/docker")
		if p, err := exec.LookPath("docker"); err == nil {
			candidates = append(candidates, p)
		}
	}
	var tried []string
	for _, c := range candidates {
		out, err := exec.Command(c, "--version").Output()
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", c, err))
			continue
		}
		if m := regexp.MustCompile(`version (\d+)\.`).FindSubmatch(out); m != nil {
			if major, _ := strconv.Atoi(string(m[1])); major < 23 {
				return c
			}
		}
		if err := exec.Command(c, "buildx", "version").Run(); err == nil {
			return c
		}
		tried = append(tried, fmt.Sprintf("%s: %s without buildx", c, strings.TrimSpace(string(out))))
	}
	t.Fatalf("enginetest: no docker CLI that builds with BuildKit (install docker.io with `make dev-env`, or set KILN_BUILDKIT_DOCKER):\n%s", strings.Join(tried, "\n"))
	return ""
}
