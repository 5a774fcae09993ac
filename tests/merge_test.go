package tests

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestIdenticalInFlightBuildsMerge: the same context and spec started
// twice while the first runs is one build that both callers watch; once it
// is over, the same request starts a new build.
func TestIdenticalInFlightBuildsMerge(t *testing.T) {
	k := sharedKilnd(t)
	bs, cs := k.client(t)
	base := enginetest.BusyboxBase(t)
	blob := tarContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo merge-" + uniq() + " && sleep 2\n"})
	ref, err := upload(t, cs, blob, digestOf(blob))
	if err != nil {
		t.Fatal(err)
	}
	req := &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"kiln-e2e/merge:" + uniq()}}, Context: ref}
	before := countBuilds(t, bs)

	ids := make([]string, 4)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := bs.StartBuild(context.Background(), req)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = resp.Build.Id
		}()
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("identical concurrent requests got different builds: %v", ids)
		}
	}
	if got := countBuilds(t, bs) - before; got != 1 {
		t.Fatalf("%d builds queued for 4 identical requests, want 1", got)
	}
	a, b := watchAll(t, bs, ids[0], 0), watchAll(t, bs, ids[0], 0)
	if len(a) != len(b) || !proto.Equal(a[len(a)-1], b[len(b)-1]) || a[len(a)-1].GetFinished().GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("watchers of the merged build disagree or it failed: %v / %v", a[len(a)-1], b[len(b)-1])
	}

	again, err := bs.StartBuild(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.Build.Id == ids[0] {
		t.Fatal("a request after the build ended joined the finished build")
	}
	watchAll(t, bs, again.Build.Id, 0)
}
