package engine_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/agent/policy"
)

// TestCacheMountsAreIsolatedPerTenant: two tenants' builds of one
// Dockerfile name the same cache mount id; with the policy's rewritten
// Dockerfile served to the engine (as the agent does), tenant B does not
// see what tenant A left in it, while A's next build does. The context's
// own Dockerfile is left as it was.
func TestCacheMountsAreIsolatedPerTenant(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	n := nonce()
	dockerfile := fmt.Sprintf("FROM %s\nARG WHO\n"+
		"RUN --mount=type=cache,id=shared-%s,target=/cache \\\n"+
		"    (cat /cache/who 2>/dev/null || echo nobody) > /seen && echo \"$WHO\" >> /cache/who\n", base, n)
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": dockerfile})

	build := func(tenant, who string) string {
		t.Helper()
		served, err := (&policy.Checker{}).Check(context.Background(), []byte(dockerfile), nil, policy.Policy{Tenant: tenant})
		if err != nil {
			t.Fatal(err)
		}
		var r recorder
		res, err := d.BuildKit(t.Context(), engine.BuildKitOptions{
			BuildOptions:   engine.BuildOptions{BuildArgs: map[string]string{"WHO": who}},
			ContextDir:     dir,
			SharedKey:      "kiln-test-" + n,
			DockerfileData: served,
		}, &r)
		if err != nil {
			t.Fatalf("build for %s: %v\nlog:\n%s", tenant, err, strings.Join(r.logs, "\n"))
		}
		id := res.ImageID
		removeImages(t, c, &id)
		return strings.TrimSpace(fileInImage(t, res.ImageID, "seen"))
	}
	if got := build("tenant-a", "a-"+n); got != "nobody" {
		t.Fatalf("tenant A's first build saw %q in a new cache mount", got)
	}
	if got := build("tenant-b", "b-"+n); got != "nobody" {
		t.Fatalf("tenant B's build saw %q: tenant A's cache mount", got)
	}
	if got := build("tenant-a", "a2-"+n); got != "a-"+n {
		t.Fatalf("tenant A's second build saw %q, want what its first build left (a-%s)", got, n)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "Dockerfile")); err != nil || string(data) != dockerfile {
		t.Fatalf("the context's Dockerfile changed: %q %v", data, err)
	}
}
