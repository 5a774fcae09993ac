package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// networkDockerfile checks, in its RUN steps, what --network none and
// --add-host promise, limitsDockerfile what --shm-size and --ulimit do; a
// step fails when its check does not hold, and so does the build.
const (
	networkDockerfile = `FROM %s
RUN echo "links:" && ip -o link && test -z "$(ip -o link | grep -v ': lo:')"
RUN wget -O- http://db.kiln.test:1/ 2>&1 | tee /dev/stderr | grep -F "(127.0.0.9:1)"
`
	limitsDockerfile = `FROM %s
RUN df -k /dev/shm && test "$(df -k /dev/shm | awk 'NR==2{print $2}')" = 131072
RUN echo "nofile soft $(ulimit -n) hard $(ulimit -Hn)" && test "$(ulimit -n)" = 1024 && test "$(ulimit -Hn)" = 2048
`
)

// TestBuildFlagsDocker runs --network, --add-host, --shm-size and --ulimit
// through the farm on the test's Docker engine, with its BuildKit and its
// classic builder.
func TestBuildFlagsDocker(t *testing.T) {
	k := sharedKilnd(t)
	p, err := enginetest.APIClient(t).Ping(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, builder := range []string{"buildkit", "classic"} {
		t.Run(builder, func(t *testing.T) {
			testNetworkFlags(t, k, builder)
			// Docker's BuildKit takes --shm-size and --ulimit from API 1.42
			// (Docker 23) on; older engines refuse them.
			testLimitFlags(t, k, builder, builder == "buildkit" && !apiAtLeast(p.APIVersion, 1, 42))
			testNetworkHost(t, k, builder)
		})
	}
}

// TestBuildFlagsBuildKitd runs them on a standalone buildkitd.
func TestBuildFlagsBuildKitd(t *testing.T) {
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	k := startKilndOnBuildKitd(t, bk, "buildkit://"+strings.TrimPrefix(bk.Addr, "unix://"))
	testNetworkFlags(t, k, "buildkit")
	testLimitFlags(t, k, "buildkit", false)
}

// testNetworkFlags builds networkDockerfile with --network none and
// --add-host (it succeeds) and without --network none (its first check
// fails: the step has a network).
func testNetworkFlags(t *testing.T, k *kilnd, builder string) {
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(networkDockerfile, base), "n": uniq()})
	flags := []string{"build", "--builder", builder, "--progress", "plain", "--no-cache", "--add-host", "db.kiln.test:127.0.0.9"}
	r := kiln(t, k.addrs.GRPC, append(flags, "--network", "none", dir)...)
	if r.code != 0 {
		t.Fatalf("build with --network none --add-host failed: %s", r)
	}
	mustContain(t, r.stdout+r.stderr, "(127.0.0.9:1)", "the build's log (--add-host resolved)")

	r = kiln(t, k.addrs.GRPC, append(flags, dir)...)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "failed at step") || !strings.Contains(r.stdout+r.stderr, "ip -o link") {
		t.Fatalf("without --network none the network check passed, want it to fail at its step: %s", r)
	}
}

// testLimitFlags builds limitsDockerfile with --shm-size 128m and
// --ulimit nofile=1024:2048: it succeeds, or when refused is true the
// agent refuses it before running a step, saying why.
func testLimitFlags(t *testing.T, k *kilnd, builder string, refused bool) {
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(limitsDockerfile, base), "n": uniq()})
	r := kiln(t, k.addrs.GRPC, "build", "--builder", builder, "--progress", "plain", "--no-cache", "--shm-size", "128m", "--ulimit", "nofile=1024:2048", dir)
	if refused {
		if r.code == 0 || !strings.Contains(r.stderr, "need Docker 23 or later") || strings.Contains(r.stdout+r.stderr, "#2 RUN") {
			t.Fatalf("--shm-size/--ulimit on an engine whose BuildKit ignores them: want a refusal before any step, got %s", r)
		}
		return
	}
	if r.code != 0 {
		t.Fatalf("build with --shm-size --ulimit failed: %s", r)
	}
	mustContain(t, r.stdout+r.stderr, "nofile soft 1024 hard 2048", "the build's log (--ulimit)")
}

// apiAtLeast compares a Docker API version "1.41" with major.minor.
func apiAtLeast(v string, major, minor int) bool {
	var a, b int
	if _, err := fmt.Sscanf(v, "%d.%d", &a, &b); err != nil {
		return false
	}
	return a > major || (a == major && b >= minor)
}

// testNetworkHost: --network host on kilnd's local farm, whose builds
// carry no tenant policy, is refused before it is queued
// (PermissionDenied, exit 2) naming the setting that would allow it.
func testNetworkHost(t *testing.T, k *kilnd, builder string) {
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nLABEL n=" + uniq() + "\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--builder", builder, "--progress", "plain", "--network", "host", dir)
	if r.code != 2 || !strings.Contains(r.stderr, "allow_network_host") || strings.Contains(r.stderr, "queued") {
		t.Fatalf("--network host without a policy allowing it: want exit 2 naming allow_network_host before the build is queued, got %s", r)
	}
}

// TestNetworkHostFollowsTenantPolicy: on a farm with a tenants file,
// --network host runs for a tenant whose policy sets allow_network_host
// (a step reaches the registry on the host's loopback, which the default
// network cannot) and is refused to another (PermissionDenied, exit 2,
// naming the setting) before it is queued.
func TestNetworkHostFollowsTenantPolicy(t *testing.T) {
	n := uniq()
	allowed, other := "net-host-"+n, "net-none-"+n
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	tokens := map[string]string{allowed: tenantsAdd(t, file, allowed), other: tenantsAdd(t, file, other)}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	withPolicy := strings.Replace(string(data), "- name: "+allowed+"\n", "- name: "+allowed+"\n    policy:\n      allow_network_host: true\n", 1)
	if withPolicy == string(data) {
		t.Fatalf("tenants file has no entry for %s:\n%s", allowed, data)
	}
	if err := os.WriteFile(file, []byte(withPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	k := mustStartKilnd(t, dir, "--tenants-file", file)

	reg := enginetest.Registry(t)
	ctxDir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(
		"FROM %s\nRUN wget -q -O- http://%s/v2/ && echo reached-%s\n", enginetest.BusyboxBase(t), reg, n)})
	build := func(tenant string, extra ...string) result {
		args := append([]string{"build", "--progress", "plain", "--no-cache", "--token", tokens[tenant]}, extra...)
		return kiln(t, k.addrs.GRPC, append(args, ctxDir)...)
	}
	if r := build(allowed, "--network", "host"); r.code != 0 || !strings.Contains(r.stderr, "reached-"+n) {
		t.Fatalf("--network host for a tenant allowed it: %s", r)
	}
	if r := build(allowed); r.code == 0 {
		t.Fatalf("the registry on the host's loopback was reachable without --network host: %s", r)
	}
	r := build(other, "--network", "host")
	if r.code != 2 || !strings.Contains(r.stderr, "allow_network_host") || !strings.Contains(r.stderr, other) || strings.Contains(r.stderr, "queued") {
		t.Fatalf("--network host for a tenant not allowed it: want exit 2 naming allow_network_host and the tenant, got %s", r)
	}
}

// TestDockerfileFromStdin: kiln build -f - reads the Dockerfile from
// standard input and sends it apart from the context, which has none.
func TestDockerfileFromStdin(t *testing.T) {
	k := sharedKilnd(t)
	n := uniq()
	dir := writeContext(t, map[string]string{"f.txt": "from the context " + n + "\n"})
	cmd := exec.Command(kilnBin, "build", "--progress", "plain", "-f", "-", dir)
	cmd.Env = append(os.Environ(), "KILN_GATEWAY="+k.addrs.GRPC)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("FROM %s\nCOPY f.txt /f.txt\nRUN cat /f.txt\n", enginetest.BusyboxBase(t)))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "from the context "+n) {
		t.Fatalf("kiln build -f - < Dockerfile: %v\n%s", err, out)
	}
}
