package kiln

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

// TestBuildCacheOptions: CacheFrom and CacheTo in buildx's syntax reach the
// build's spec parsed; a value the farm would refuse fails Build with
// InvalidArgument before anything is sent.
func TestBuildCacheOptions(t *testing.T) {
	farm := farmtest.Start(t)
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	for _, bad := range []BuildRequest{
		{CacheTo: []string{"type=local,dest=/tmp/x"}},
		{CacheFrom: []string{"type=inline"}},
		{CacheTo: []string{"type=registry,ref=127.0.0.1:5000/app:c,mode=all"}},
	} {
		bad.Context = pack(t, dir, "")
		_, err := client.Build(t.Context(), bad)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "--cache-") {
			t.Fatalf("Build with %q/%q: %v, want InvalidArgument naming the flag", bad.CacheFrom, bad.CacheTo, err)
		}
	}
	if farm.Calls() != 0 {
		t.Fatalf("the farm got %d calls", farm.Calls())
	}
	b, err := client.Build(t.Context(), BuildRequest{
		Context:   pack(t, dir, ""),
		CacheFrom: []string{"127.0.0.1:5000/app:cache"},
		CacheTo:   []string{"type=inline"},
	})
	if err != nil {
		t.Fatal(err)
	}
	spec := b.Record().GetSpec()
	if from := spec.GetCacheFrom(); len(from) != 1 || from[0].GetType() != "registry" || from[0].GetAttrs()["ref"] != "127.0.0.1:5000/app:cache" {
		t.Fatalf("cache_from %v", from)
	}
	if to := spec.GetCacheTo(); len(to) != 1 || to[0].GetType() != "inline" {
		t.Fatalf("cache_to %v", to)
	}
}
