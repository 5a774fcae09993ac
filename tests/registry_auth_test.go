package tests

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestClientsRegistryCredentialsTravelWithTheBuild: `kiln build` takes the
// client's `docker login` credentials to the farm, sealed, as buildx hands
// its builder the client's; the agent's host has none. They serve the push
// and, with either builder, the pull of a base image; they show up in no
// output, log or NATS data.
func TestClientsRegistryCredentialsTravelWithTheBuild(t *testing.T) {
	k := sharedKilnd(t)
	const user = "kiln-e2e"
	password := "pw-" + uniq() + uniq()
	reg := enginetest.AuthRegistry(t, user, password)
	n := uniq()
	tag := reg + "/kiln-e2e/auth:" + n
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + enginetest.BusyboxBase(t) + "\nLABEL kiln-e2e=" + n + "\n"})
	var outputs []string
	run := func(args ...string) result {
		t.Helper()
		r := kiln(t, k.addrs.GRPC, append([]string{"build", "--progress", "plain"}, args...)...)
		outputs = append(outputs, r.stdout, r.stderr)
		return r
	}

	enginetest.UseDockerConfig(t, nil) // the client has no credentials
	if r := run("--push", "-t", tag, dir); r.code != 1 || !strings.Contains(r.stderr, "no basic auth credentials") {
		t.Fatalf("push without credentials: want exit 1 with the registry's refusal: %s", r)
	}
	enginetest.UseDockerConfig(t, map[string][2]string{reg: {user, password}})
	if r := run("--push", "-t", tag, dir); r.code != 0 {
		t.Fatalf("push with the client's credentials: %s", r)
	}
	req, _ := http.NewRequest(http.MethodHead, "http://"+reg+"/v2/kiln-e2e/auth/manifests/"+n, nil)
	req.SetBasicAuth(user, password)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("the registry does not have %s: %v %v", tag, res, err)
	}

	// A base image from the registry, pulled (--pull) by either builder.
	from := writeContext(t, map[string]string{"Dockerfile": "FROM " + tag + "\nLABEL child=" + n + "\n"})
	for _, builder := range []string{"buildkit", "classic"} {
		t.Run(builder, func(t *testing.T) {
			enginetest.UseDockerConfig(t, nil)
			if r := run("--pull", "--builder", builder, from); r.code != 1 {
				t.Fatalf("pulling the base image without credentials: want exit 1: %s", r)
			}
			enginetest.UseDockerConfig(t, map[string][2]string{reg: {user, password}})
			if r := run("--pull", "--builder", builder, from); r.code != 0 {
				t.Fatalf("pulling the base image with the client's credentials: %s", r)
			}
		})
	}

	for _, out := range outputs {
		if strings.Contains(out, password) {
			t.Fatalf("the CLI's output shows the password:\n%s", out)
		}
	}
	k.mustNotHold(t, "the registry password", password)
}
