package tests

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// startTenantsKilnd starts a kilnd of its own with a tenants file made by
// `kilnd tenants add`, one tenant per name, and returns it with each
// tenant's token. It listens on loopback in plaintext (a token may travel
// so to a loopback gateway); kilnd stops when the test ends.
func startTenantsKilnd(t *testing.T, names ...string) (*kilnd, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	tokens := map[string]string{}
	for _, name := range names {
		tokens[name] = tenantsAdd(t, file, name)
	}
	k := mustStartKilnd(t, dir, "--tenants-file", file)
	return k, tokens
}

// TestCacheMountsAreIsolatedAcrossTenants: two tenants' builds name the
// same cache mount id. What tenant A leaves in it is not there for tenant
// B's step, while A's next build (its input changed, so the step runs
// again) finds it: the mount works, and only within its tenant.
func TestCacheMountsAreIsolatedAcrossTenants(t *testing.T) {
	n := uniq()
	// Tenant names fresh for each run, so no earlier run's cache (the
	// engine keeps cache mounts) can be what a build finds.
	a, b := "cache-a-"+n, "cache-b-"+n
	k, tokens := startTenantsKilnd(t, a, b)
	base := enginetest.BusyboxBase(t)
	marker := "left-by-a-" + uniq()
	// The step's text (which the build output shows) holds neither the
	// marker nor what the step prints when it finds one: the marker comes
	// in a build argument, and "found[...]" is made at run time.
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nARG WHO\nARG ROUND\nARG MARKER\n" +
		"RUN --mount=type=cache,id=shared,target=/c echo \"$WHO round $ROUND\" && \\\n" +
		"  M=\"$(cat /c/marker 2>/dev/null || true)\" && echo \"found[$M]\" && \\\n" +
		"  if [ -n \"$MARKER\" ]; then echo \"$MARKER\" > /c/marker; fi\n"})
	build := func(tenant, who, round string, extra ...string) string {
		t.Helper()
		args := append([]string{"build", "--progress", "plain", "--token", tokens[tenant],
			"--build-arg", "WHO=" + who, "--build-arg", "ROUND=" + round}, extra...)
		r := kiln(t, k.addrs.GRPC, append(args, dir)...)
		if r.code != 0 {
			t.Fatalf("%s's build (round %s): %s", tenant, round, r)
		}
		mustContain(t, r.stderr, who+" round "+round, tenant+"'s build output (the step ran)")
		mustContain(t, r.stderr, "id=kiln/"+tenant+"/shared", tenant+"'s step (the cache mount id carries the tenant's prefix)")
		return r.stderr
	}

	out := build(a, "a", "1", "--build-arg", "MARKER="+marker)
	mustContain(t, out, "found[]", "tenant A's first build (a fresh tenant's cache mount is empty)")

	out = build(b, "b", "1")
	if strings.Contains(out, marker) {
		t.Fatalf("tenant B's step read what tenant A left in the cache mount %q:\n%s", "shared", out)
	}
	mustContain(t, out, "found[]", "tenant B's build (its cache mount is its own, empty)")

	out = build(a, "a", "2")
	mustContain(t, out, "found["+marker+"]", "tenant A's second build (the cache mount keeps what A's first build left)")
}
