package kiln

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runBuild starts a build and waits for its end.
func runBuild(ctx context.Context, c *Client, req BuildRequest) (*kilnv1.Build, error) {
	b, err := c.Build(ctx, req)
	if err != nil {
		return nil, err
	}
	return b.Wait(ctx)
}

// watchAll follows build id from fromSequence to its end, calling onEvent
// (which may be nil) for each event, and returns what Wait returns.
func watchAll(ctx context.Context, c *Client, id string, fromSequence uint64, onEvent func(Event)) (*kilnv1.Build, error) {
	b, err := c.Watch(ctx, id, fromSequence)
	if err != nil {
		return nil, err
	}
	for ev := range b.Events() {
		if onEvent != nil {
			onEvent(ev)
		}
	}
	return b.Wait(ctx)
}

// listAll walks every page of the caller's builds.
func listAll(ctx context.Context, c *Client) error {
	for _, err := range c.List(ctx, ListFilter{}) {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestEventsAreQueuedUntilRead: the build is followed to its end whether
// or not Events is read; Events called after Wait still delivers every
// event from the first, once and in order, then closes.
func TestEventsAreQueuedUntilRead(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithHeldBuilds())
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	b, err := client.Build(t.Context(), BuildRequest{Context: pack(t, dir, "")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		farm.Log(b.ID(), fmt.Sprintf("line %d", i))
	}
	farm.Finish(b.ID(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED)
	record, err := b.Wait(t.Context())
	if err != nil || record.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("Wait with nobody reading Events: %v, %v", record.GetState(), err)
	}
	var got []uint64
	for ev := range b.Events() {
		got = append(got, ev.Sequence())
	}
	want := make([]uint64, len(farm.Events(b.ID())))
	for i := range want {
		want[i] = uint64(i + 1)
	}
	if len(want) != 102 || !slices.Equal(got, want) {
		t.Fatalf("Events after Wait gave sequences %v, want 1…%d", got, len(want))
	}
	if again, ok := <-b.Events(); ok {
		t.Fatalf("Events delivered %v after its close", again.Proto())
	}
}

// TestEventsStopWithTheBuildContext: a reader that walks away ends the
// feeding goroutine by cancelling the context given to Build: the channel
// closes, and Wait says why following stopped.
func TestEventsStopWithTheBuildContext(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithHeldBuilds())
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	ctx, cancel := context.WithCancel(t.Context())
	b, err := client.Build(ctx, BuildRequest{Context: pack(t, dir, "")})
	if err != nil {
		t.Fatal(err)
	}
	first := <-b.Events()
	if _, ok := first.(*StateChanged); !ok || first.Sequence() != 1 {
		t.Fatalf("first event %T %v, want the state change at 1", first, first.Proto())
	}
	cancel()
	for range b.Events() {
	}
	if _, err := b.Wait(t.Context()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after the Build's context ended: %v, want context.Canceled", err)
	}
	if farm.Builds()[0].GetState() != kilnv1.BuildState_BUILD_STATE_RUNNING {
		t.Fatal("ending the Build's context changed the build on the farm")
	}
}

// TestBuildRefusesANegativeTimeout before anything is sent.
func TestBuildRefusesANegativeTimeout(t *testing.T) {
	farm := farmtest.Start(t)
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	_, err := client.Build(t.Context(), BuildRequest{Context: pack(t, dir, ""), Timeout: -time.Second})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "timeout -1s is negative") {
		t.Fatalf("Build with a negative timeout: %v, want InvalidArgument", err)
	}
	if farm.Calls() != 0 {
		t.Fatalf("the farm got %d calls", farm.Calls())
	}
}
