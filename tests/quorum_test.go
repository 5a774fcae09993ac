package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
)

// TestQuorumLossRefusesBuildsUntilNATSReturns runs 3 NATS nodes (R3), a
// gateway, a scheduler and an agent, and SIGKILLs two of the NATS nodes:
// with no quorum, StartBuild answers codes.Unavailable (never another code,
// and never OK for a build that is then lost: one it accepts must later
// succeed). Once both nodes are restarted the farm serves again without
// restarting the gateway, the scheduler or the agent: a build succeeds.
func TestQuorumLossRefusesBuildsUntilNATSReturns(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	f := startLocalFarm(t, ctx, localfarm.Options{NATS: 3, Gateways: 1, Schedulers: 1, Agents: 1, Images: []string{base}})
	c := dialFarm(t, f.GatewayAddrs())
	services := []string{"gateway-1", "scheduler-1", "agent-1"}
	pids := map[string]int{}
	for _, name := range services {
		pids[name] = f.mustFind(name).PID
	}

	run := uniq()
	repo := "kiln-quorum-" + run
	// Two contexts: one built before the loss (the gateway remembers that
	// it checked it, so StartBuild goes straight to the stores) and one
	// only uploaded (StartBuild must read the object store to check it).
	upload := func(name string) *kilnsdk.Context {
		t.Helper()
		dir := writeContext(t, map[string]string{
			"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo quorum-%s-%s\nCOPY f.txt /f.txt\n", base, run, name),
			"f.txt":      name + "\n",
		})
		uctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		bc, err := packDir(uctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.UploadContext(uctx, bc); err != nil {
			t.Fatalf("upload context %s: %v", name, err)
		}
		return bc
	}
	built, fresh := upload("built"), upload("fresh")
	request := func(bc *kilnsdk.Context, tag string) *kilnv1.StartBuildRequest {
		return &kilnv1.StartBuildRequest{
			Spec:           &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Tags: []string{reg + "/" + repo + ":" + tag}, Push: true},
			Context:        bc.Ref(),
			IdempotencyKey: "quorum-" + run + "-" + tag,
		}
	}
	// succeeds watches a build to its end and checks it succeeded and
	// pushed its tag.
	succeeds := func(id, tag, what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		var b *kilnv1.Build
		build, err := c.Watch(wctx, id, 0)
		if err == nil {
			b, err = build.Wait(wctx)
		}
		if err != nil {
			t.Fatalf("%s: build %s (%s): %v", what, tag, id, err)
		}
		got, err := manifestDigest(wctx, reg, repo, tag)
		if err != nil || got == "" || len(b.GetResult().GetPushed()) != 1 || got != b.Result.Pushed[0].GetDigest() {
			t.Fatalf("%s: build %s (%s) succeeded with pushed %v; the registry has %q (%v)", what, tag, id, b.GetResult().GetPushed(), got, err)
		}
	}
	start := func(req *kilnv1.StartBuildRequest) (*kilnv1.Build, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		resp, err := c.BuildService().StartBuild(cctx, req)
		return resp.GetBuild(), err
	}

	b, err := start(request(built, "before"))
	if err != nil {
		t.Fatalf("StartBuild before the quorum loss: %v", err)
	}
	succeeds(b.GetId(), "before", "before the quorum loss")

	// Quorum loss: two of three nodes gone.
	for _, name := range []string{"nats-2", "nats-3"} {
		if err := f.Kill(name); err != nil {
			t.Fatalf("kill %s: %v", name, err)
		}
	}
	lost := time.Now()
	type accepted struct{ id, tag string }
	var during []accepted
	unavailable := 0
	codesSeen := map[codes.Code]int{}
	var wrong []string
	tries := 0
	// StartBuild until it has answered Unavailable for both contexts a few
	// times; any other error is wrong, an OK must be honoured later.
	_, err = waitUntil(ctx, 2*time.Minute, "StartBuild to answer Unavailable during the quorum loss", func() bool {
		bc, which := built, "built before"
		if tries%2 == 1 {
			bc, which = fresh, "only uploaded"
		}
		tag := fmt.Sprintf("during-%d", tries)
		tries++
		called := time.Now()
		b, err := start(request(bc, tag))
		code := status.Code(err)
		codesSeen[code]++
		switch code {
		case codes.OK:
			during = append(during, accepted{b.GetId(), tag})
		case codes.Unavailable:
			unavailable++
		default:
			wrong = append(wrong, fmt.Sprintf("StartBuild %s (context %s, called %v after the kill, answered after %v): %v",
				tag, which, called.Sub(lost).Round(time.Millisecond), time.Since(called).Round(time.Millisecond), err))
		}
		return unavailable >= 4 || len(wrong) >= 4
	})
	if len(wrong) > 0 {
		t.Errorf("during the quorum loss StartBuild answered other than codes.Unavailable (answers %v):\n%s", codesSeen, strings.Join(wrong, "\n"))
	}
	if err != nil && len(wrong) == 0 {
		t.Fatalf("%v (answers: %v)", err, codesSeen)
	}
	t.Logf("quorum loss: %d StartBuild calls in %v, answers %v", tries, time.Since(lost).Round(time.Millisecond), codesSeen)
	if f.serving("gateway-1") {
		t.Logf("quorum loss: note: the gateway's /readyz still answers 200 with no NATS quorum")
	}

	// Both nodes back; the same gateway, scheduler and agent serve again.
	back := time.Now()
	for _, name := range []string{"nats-2", "nats-3"} {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := f.Restart(rctx, name)
		cancel()
		if err != nil {
			t.Fatalf("restart %s: %v", name, err)
		}
	}
	restarted := time.Since(back)
	var after *kilnv1.Build
	var lastErr error
	took, err := waitUntil(ctx, 3*time.Minute, "StartBuild to succeed after the quorum returned", func() bool {
		after, lastErr = start(request(fresh, "after")) // one idempotency key: retries are one build
		switch status.Code(lastErr) {
		case codes.OK:
			return true
		case codes.Unavailable:
			return false
		default:
			t.Fatalf("StartBuild after the quorum returned: %v, want OK or (until the streams have leaders) Unavailable", lastErr)
			return false
		}
	})
	if err != nil {
		t.Fatalf("%v (last answer: %v)", err, lastErr)
	}
	t.Logf("quorum back: both nodes restarted in %v; StartBuild OK %v later (%v after the loss)",
		restarted.Round(time.Millisecond), took.Round(time.Millisecond), time.Since(lost).Round(time.Millisecond))
	succeeds(after.GetId(), "after", "after the quorum returned")
	for _, a := range during {
		succeeds(a.id, a.tag, "accepted during the quorum loss")
	}
	for _, name := range services {
		p := f.mustFind(name)
		if p.PID != pids[name] {
			t.Errorf("%s has pid %d, was %d: it was restarted", name, p.PID, pids[name])
		}
		if !f.serving(name) {
			t.Errorf("%s does not serve (/readyz) after the quorum returned", name)
		}
	}
}
