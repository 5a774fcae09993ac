package cas_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// casStream returns KILN_CAS's stream config and state.
func casStream(t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	st, err := js.Stream(t.Context(), "OBJ_"+bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// lineItems returns n one-line blobs unique to tag.
func lineItems(tag string, n int) []cas.Item {
	var items []cas.Item
	for i := range n {
		data := []byte(fmt.Sprintf("%s line %d\n", tag, i))
		items = append(items, cas.Item{Digest: digest(data), Data: data})
	}
	return items
}

// batches counts the messages of KILN_CAS after sequence after by the
// atomic batch that wrote them ("" for messages written one by one).
func batches(t *testing.T, js jetstream.JetStream, after uint64) map[string]int {
	t.Helper()
	st, err := js.Stream(t.Context(), "OBJ_"+bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for seq := after + 1; seq <= casStream(t, js).State.LastSeq; seq++ {
		m, err := st.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		out[m.Header.Get("Nats-Batch-Id")]++
	}
	return out
}

// readAllBack checks that a Store remembering nothing has and reads every
// item.
func readAllBack(t *testing.T, js jetstream.JetStream, items []cas.Item) {
	t.Helper()
	fresh, err := cas.Open(t.Context(), js, cas.RememberFor(0))
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	var sizes []int64
	for _, it := range items {
		digests = append(digests, it.Digest)
		sizes = append(sizes, int64(len(it.Data)))
	}
	have, err := fresh.HasMany(t.Context(), digests, sizes)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fresh.GetMany(t.Context(), digests)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if !have[i] || string(got[it.Digest]) != string(it.Data) {
			t.Fatalf("blob %d (%s): has %v, read %q; want %q", i, it.Digest, have[i], got[it.Digest], it.Data)
		}
	}
}

// TestPutBatchWritesAtomicBatches: PutBatch lets KILN_CAS take atomic
// batches and writes 1 200 blobs (2 400 messages) in three of them, at
// most 1 000 messages each: the stream holds exactly the blobs' messages
// (a duplicate blob of the batch is written once), and every blob reads
// back.
func TestPutBatchWritesAtomicBatches(t *testing.T) {
	ctx := context.Background()
	conn := bustest.Conn(t)
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	items := lineItems("atomic", 1200)
	before := casStream(t, conn.JS).State.LastSeq
	if err := s.PutBatch(ctx, append(items, items[3]), cas.Meta{Owner: "team-a"}); err != nil {
		t.Fatal(err)
	}
	info := casStream(t, conn.JS)
	if !info.Config.AllowAtomicPublish {
		t.Fatal("KILN_CAS does not take atomic batches after PutBatch")
	}
	if got, want := info.State.LastSeq-before, uint64(2*len(items)); got != want {
		t.Fatalf("PutBatch stored %d messages, want %d (a chunk and a meta per distinct blob)", got, want)
	}
	bs := batches(t, conn.JS, before)
	if len(bs) != 3 || bs[""] != 0 {
		t.Fatalf("messages by atomic batch = %v, want three batches and none written alone", bs)
	}
	for id, n := range bs {
		if n > 1000 {
			t.Fatalf("batch %s has %d messages, over the server's 1 000", id, n)
		}
	}
	readAllBack(t, conn.JS, items)
}

// TestPutBatchAfterBatchesWereTurnedOff: KILN_CAS set up again without
// atomic batches (as bus.Setup's object-store config does) under a Store
// that was writing them: its next batch is refused and written message by
// message instead, whole, and the one after goes in an atomic batch again.
func TestPutBatchAfterBatchesWereTurnedOff(t *testing.T) {
	ctx := context.Background()
	conn := bustest.Conn(t)
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch(ctx, lineItems("first", 10), cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	cfg := casStream(t, conn.JS).Config
	cfg.AllowAtomicPublish = false
	if _, err := conn.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	before := casStream(t, conn.JS).State.LastSeq
	second := lineItems("second", 700)
	if err := s.PutBatch(ctx, second, cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	if bs := batches(t, conn.JS, before); len(bs) != 1 || bs[""] != 2*len(second) {
		t.Fatalf("messages by atomic batch = %v, want %d written alone", bs, 2*len(second))
	}
	readAllBack(t, conn.JS, second)
	before = casStream(t, conn.JS).State.LastSeq
	third := lineItems("third", 10)
	if err := s.PutBatch(ctx, third, cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	if !casStream(t, conn.JS).Config.AllowAtomicPublish {
		t.Fatal("KILN_CAS does not take atomic batches again after a refused one")
	}
	if bs := batches(t, conn.JS, before); len(bs) != 1 || bs[""] != 0 {
		t.Fatalf("messages by atomic batch = %v, want one batch", bs)
	}
	readAllBack(t, conn.JS, third)
}

// TestPutBatchWithTheGatewaysPermissions: on a farm with credentials the
// gateway's role may turn atomic batches on and write them.
func TestPutBatchWithTheGatewaysPermissions(t *testing.T) {
	ctx := context.Background()
	farm := bustest.AuthFarm(t)
	conn := farm.Conn(t, bus.RoleGateway, "")
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	items := lineItems("gateway", 600)
	if err := s.PutBatch(ctx, items, cas.Meta{Owner: "team-a"}); err != nil {
		t.Fatal(err)
	}
	if !casStream(t, conn.JS).Config.AllowAtomicPublish {
		t.Fatal("the gateway could not turn atomic batches on")
	}
	readAllBack(t, conn.JS, items)
}

// TestPutBatchOnAThreeNodeCluster: with KILN_CAS at three replicas an
// atomic batch is one raft proposal; its blobs read back through a Store
// remembering nothing.
func TestPutBatchOnAThreeNodeCluster(t *testing.T) {
	ctx := context.Background()
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "cas")
	limits := bus.DefaultLimits
	limits.Replicas = 3
	if err := bus.Setup(ctx, conn.JS, limits); err != nil {
		t.Fatal(err)
	}
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	items := lineItems("cluster", 800)
	before := casStream(t, conn.JS).State.LastSeq
	if err := s.PutBatch(ctx, items, cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	if bs := batches(t, conn.JS, before); len(bs) != 2 || bs[""] != 0 {
		t.Fatalf("messages by atomic batch = %v, want two batches", bs)
	}
	readAllBack(t, conn.JS, items)
}
