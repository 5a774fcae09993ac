package cas_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// TestPutBatchStoresObjectsEveryReaderSees: blobs stored by PutBatch are
// objects of KILN_CAS like any other: a fresh Store (no memory) has them
// and reads them, the object store's own Get reads and checks them, List
// shows their owner, Delete removes them, and storing a blob twice keeps
// one copy.
func TestPutBatchStoresObjectsEveryReaderSees(t *testing.T) {
	ctx := context.Background()
	conn := bustest.Conn(t)
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	var items []cas.Item
	for i := range 50 {
		data := []byte(fmt.Sprintf("line %d\n", i))
		items = append(items, cas.Item{Digest: digest(data), Data: data})
	}
	items = append(items, cas.Item{Digest: digest(nil), Data: nil}) // an empty file
	if err := s.PutBatch(ctx, items, cas.Meta{Owner: "team-a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch(ctx, items[:10], cas.Meta{Owner: "team-a"}); err != nil { // a retried batch
		t.Fatal(err)
	}

	fresh, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := conn.JS.ObjectStore(ctx, bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if ok, err := fresh.Has(ctx, it.Digest, int64(len(it.Data))); err != nil || !ok {
			t.Fatalf("Has(%s) = %v, %v", it.Digest, ok, err)
		}
		r, err := fresh.Get(ctx, it.Digest)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, it.Data) {
			t.Fatalf("Get(%s) = %q, %v; want %q", it.Digest, got, err, it.Data)
		}
		got, err = obj.GetBytes(ctx, it.Digest) // checks the object's digest
		if err != nil || !bytes.Equal(got, it.Data) {
			t.Fatalf("object store GetBytes(%s) = %q, %v; want %q", it.Digest, got, err, it.Data)
		}
	}
	st, err := conn.JS.Stream(ctx, "OBJ_"+bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(2*len(items) - 1); info.State.Msgs != want { // a chunk and a meta each, none for the empty blob's chunk
		t.Fatalf("stream holds %d messages after a batch and a retry of part of it, want %d", info.State.Msgs, want)
	}
	objs, err := fresh.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != len(items) {
		t.Fatalf("List = %d objects, want %d", len(objs), len(items))
	}
	for _, o := range objs {
		if o.Owner != "team-a" {
			t.Fatalf("object %s has owner %q, want team-a", o.Digest, o.Owner)
		}
	}

	if err := fresh.Delete(ctx, items[0].Digest); err != nil {
		t.Fatal(err)
	}
	if ok, err := fresh.Has(ctx, items[0].Digest, -1); err != nil || ok {
		t.Fatalf("Has after Delete = %v, %v", ok, err)
	}
	other, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Get(ctx, items[0].Digest); err == nil {
		t.Fatal("Get after Delete found the blob")
	}
}

// TestPutBatchVerifiesBeforeStoring: one blob whose bytes do not match
// its digest stores nothing of its batch.
func TestPutBatchVerifiesBeforeStoring(t *testing.T) {
	ctx := context.Background()
	s, err := cas.Open(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	good := []byte("good\n")
	items := []cas.Item{{Digest: digest(good), Data: good}, {Digest: digest([]byte("b")), Data: []byte("not b")}}
	if err := s.PutBatch(ctx, items, cas.Meta{}); !errors.Is(err, cas.ErrDigestMismatch) {
		t.Fatalf("PutBatch = %v, want ErrDigestMismatch", err)
	}
	if ok, err := s.Has(ctx, digest(good), -1); err != nil || ok {
		t.Fatalf("Has(good blob of a refused batch) = %v, %v; want false", ok, err)
	}
}

// TestHasManyAndGetMany: the batched reads answer for more blobs than one
// request names, tell stored from missing and deleted blobs and wrong
// sizes, and GetMany returns only blobs whose bytes match their digest
// (blobs the object store's Put wrote are left to Get).
func TestHasManyAndGetMany(t *testing.T) {
	ctx := context.Background()
	conn := bustest.Conn(t)
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	var items []cas.Item
	for i := range 1200 {
		data := []byte(fmt.Sprintf("many %d\n", i))
		items = append(items, cas.Item{Digest: digest(data), Data: data})
	}
	if err := s.PutBatch(ctx, items, cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	streamed := []byte("put by the object store's own Put\n")
	if err := s.Put(ctx, digest(streamed), int64(len(streamed)), bytes.NewReader(streamed)); err != nil {
		t.Fatal(err)
	}
	fresh, err := cas.Open(ctx, conn.JS, cas.RememberFor(0)) // asks NATS every time
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Delete(ctx, items[5].Digest); err != nil {
		t.Fatal(err)
	}
	missing := []byte("never stored\n")
	var digests []string
	var sizes []int64
	for _, it := range items {
		digests = append(digests, it.Digest)
		sizes = append(sizes, int64(len(it.Data)))
	}
	digests = append(digests, digest(streamed), digest(missing), items[7].Digest)
	sizes = append(sizes, int64(len(streamed)), int64(len(missing)), int64(len(items[7].Data))+1)
	have, err := fresh.HasMany(ctx, digests, sizes)
	if err != nil {
		t.Fatal(err)
	}
	for i, ok := range have {
		want := i != 5 && i != len(digests)-2 && i != len(digests)-1
		if ok != want {
			t.Fatalf("HasMany[%d] (%s, %d bytes) = %v, want %v", i, digests[i], sizes[i], ok, want)
		}
	}
	got, err := fresh.GetMany(ctx, digests)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		data, ok := got[it.Digest]
		if i == 5 {
			if ok {
				t.Fatal("GetMany returned a deleted blob")
			}
			continue
		}
		if !ok || !bytes.Equal(data, it.Data) {
			t.Fatalf("GetMany[%s] = %q, %v; want %q", it.Digest, data, ok, it.Data)
		}
	}
	if _, ok := got[digest(streamed)]; ok {
		t.Fatal("GetMany returned a blob the object store's Put wrote (its chunk subject is not its digest)")
	}
	if len(got) != len(items)-1 {
		t.Fatalf("GetMany returned %d blobs, want %d", len(got), len(items)-1)
	}
}

// TestConcurrentGetsAreBatched: many Gets at once, of blobs PutBatch
// wrote and of one the object store's Put wrote, each return their own
// bytes (the batched read answers the first, Get's own path the other).
func TestConcurrentGetsAreBatched(t *testing.T) {
	ctx := context.Background()
	conn := bustest.Conn(t)
	s, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	var items []cas.Item
	for i := range 600 {
		data := []byte(fmt.Sprintf("concurrent %d\n", i))
		items = append(items, cas.Item{Digest: digest(data), Data: data})
	}
	if err := s.PutBatch(ctx, items, cas.Meta{}); err != nil {
		t.Fatal(err)
	}
	streamed := bytes.Repeat([]byte("streamed "), 50_000) // several chunks
	if err := s.Put(ctx, digest(streamed), int64(len(streamed)), bytes.NewReader(streamed)); err != nil {
		t.Fatal(err)
	}
	items = append(items, cas.Item{Digest: digest(streamed), Data: streamed})
	reader, err := cas.Open(ctx, conn.JS) // remembers nothing
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, len(items))
	sem := make(chan struct{}, 32)
	for _, it := range items {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			r, err := reader.Get(ctx, it.Digest)
			if err != nil {
				errs <- err
				return
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err == nil && !bytes.Equal(got, it.Data) {
				err = fmt.Errorf("Get(%s) returned %d other bytes", it.Digest, len(got))
			}
			errs <- err
		}()
	}
	for range items {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
