package bus_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestOutputsAgentsWriteGatewaysRead: an agent's credential writes and reads
// KILN_OUTPUTS (it skips blobs already there), a gateway's only reads it.
func TestOutputsAgentsWriteGatewaysRead(t *testing.T) {
	f := bustest.AuthFarm(t, "agent-a")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, _ := violations(t, f, bus.RoleAgent, "agent-a")
	gw, errs := violations(t, f, bus.RoleGateway, "")

	ao, err := a.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		t.Fatalf("open %s as an agent: %v", bus.BucketOutputs, err)
	}
	const name = "sha256/2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	if _, err := ao.PutBytes(ctx, name, []byte("foo")); err != nil {
		t.Fatalf("put an output blob as an agent: %v", err)
	}
	if _, err := ao.PutBytes(ctx, name, []byte("foo")); err != nil {
		t.Fatalf("put the same blob again as an agent (replacing it purges the old chunks): %v", err)
	}
	if _, err := ao.GetInfo(ctx, name); err != nil {
		t.Fatalf("look the blob up as an agent: %v", err)
	}

	gwo, err := gw.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		t.Fatalf("open %s as a gateway: %v", bus.BucketOutputs, err)
	}
	r, err := gwo.Get(ctx, name)
	if err != nil {
		t.Fatalf("read the blob as a gateway: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, []byte("foo")) {
		t.Fatalf("gateway read %q, %v; want foo", got, err)
	}

	const chunk = "$O." + bus.BucketOutputs + ".C.forged"
	if err := gw.NC.Publish(chunk, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, `"`+chunk+`"`)
}

// TestSetupOutputsTTL: KILN_OUTPUTS is created with DefaultOutputTTL, a
// Setup with OutputTTL sets it, and a Setup without one (a gateway's) keeps
// what the scheduler set.
func TestSetupOutputsTTL(t *testing.T) {
	conn := bustest.Conn(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ttl := func() time.Duration {
		t.Helper()
		st, err := conn.JS.Stream(ctx, "OBJ_"+bus.BucketOutputs)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxAge
	}
	if got := ttl(); got != bus.DefaultOutputTTL {
		t.Fatalf("TTL after the first Setup: %s, want %s", got, bus.DefaultOutputTTL)
	}
	l := bus.DefaultLimits
	l.OutputTTL = 2 * time.Hour
	if err := bus.Setup(ctx, conn.JS, l); err != nil {
		t.Fatal(err)
	}
	if got := ttl(); got != 2*time.Hour {
		t.Fatalf("TTL after Setup with --output-ttl 2h: %s", got)
	}
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	if got := ttl(); got != 2*time.Hour {
		t.Fatalf("TTL after a Setup without --output-ttl: %s, want the 2h set before", got)
	}
	l.OutputTTL = -time.Hour
	if err := bus.Setup(ctx, conn.JS, l); err == nil {
		t.Fatal("Setup with a negative --output-ttl passed")
	}
}

// TestObjectIncompleteSeesAMissingChunk: an object whose chunks are all
// there is complete, for the agent that wrote it; one that lost a chunk
// (as an upload that failed after its meta leaves it) is not.
func TestObjectIncompleteSeesAMissingChunk(t *testing.T) {
	f := bustest.AuthFarm(t, "agent-a")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a := f.Conn(t, bus.RoleAgent, "agent-a")
	store, err := a.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 300<<10) // three chunks of 128 KiB
	for i := range data {
		data[i] = byte(i * 7)
	}
	info, err := store.PutBytes(ctx, "sha256/three-chunks", data)
	if err != nil {
		t.Fatal(err)
	}
	if info.Chunks < 2 {
		t.Fatalf("the object has %d chunks, want several", info.Chunks)
	}
	if bus.ObjectIncomplete(ctx, a.JS, bus.BucketOutputs, info) {
		t.Fatal("a whole object reads as incomplete")
	}
	st, err := a.JS.Stream(ctx, "OBJ_"+bus.BucketOutputs)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, "$O."+bus.BucketOutputs+".C."+info.NUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, msg.Sequence); err != nil {
		t.Fatalf("delete a chunk as an agent: %v", err)
	}
	if !bus.ObjectIncomplete(ctx, a.JS, bus.BucketOutputs, info) {
		t.Fatal("an object missing a chunk reads as complete")
	}
}
