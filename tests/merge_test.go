package tests

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// TestIdempotencyKeyMeansOneBuildForGood: a key maps to its build after the
// build ended and after a restart; the key with another request is refused.
func TestIdempotencyKeyMeansOneBuildForGood(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	dataDir := t.TempDir()
	k, err := startKilnd(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	bs, cs := k.client(t)
	blob := tarContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo idem-" + uniq() + "\n"})
	ref, err := upload(t, cs, blob, digestOf(blob))
	if err != nil {
		t.Fatal(err)
	}
	key := "ci-job-" + uniq()
	req := &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{}, Context: ref, IdempotencyKey: key}
	first, err := bs.StartBuild(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	watchAll(t, bs, first.Build.Id, 0) // it finishes
	k.stop()

	k2, err := startKilnd(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer k2.stop()
	bs2, _ := k2.client(t)
	again, err := bs2.StartBuild(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.Build.Id != first.Build.Id || again.Build.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("retry with the key got build %s (%s), want the finished %s", again.Build.Id, again.Build.State, first.Build.Id)
	}
	other := &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{NoCache: true}, Context: ref, IdempotencyKey: key}
	_, err = bs2.StartBuild(context.Background(), other)
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), key) {
		t.Fatalf("the key with another request = %v, want FailedPrecondition naming the key", err)
	}
}
