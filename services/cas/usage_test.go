package cas_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// TestUsageChargesAreAtomic: concurrent charges against one quota never
// exceed it, and every refusal is a QuotaError naming the tenant.
func TestUsageChargesAreAtomic(t *testing.T) {
	ctx := context.Background()
	u, err := cas.OpenUsage(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted int
	)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := u.Charge(ctx, "team-a", 100, 1000)
			var qe *cas.QuotaError
			switch {
			case err == nil:
				mu.Lock()
				accepted++
				mu.Unlock()
			case errors.As(err, &qe) && qe.Tenant == "team-a" && qe.Quota == 1000:
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if used, _ := u.Get(ctx, "team-a"); accepted != 10 || used != 1000 {
		t.Fatalf("accepted %d charges, usage %d; want 10 and 1000", accepted, used)
	}
	if err := u.Credit(ctx, "team-a", 5000); err != nil {
		t.Fatal(err)
	}
	if used, _ := u.Get(ctx, "team-a"); used != 0 {
		t.Fatalf("usage after an over-credit = %d, want 0", used)
	}
	if err := u.Charge(ctx, "team b/ü", 7, 0); err != nil { // any name; 0: unlimited
		t.Fatal(err)
	}
	all, err := u.All(ctx)
	if err != nil || all["team b/ü"] != 7 || all["team-a"] != 0 {
		t.Fatalf("All = %v, %v", all, err)
	}
}

// TestStoreMemoryIsBoundedInAge: Has answers from memory only within
// RememberFor, and Forget drops a digest at once, so a Store never vouches
// for a blob the collector deleted.
func TestStoreMemoryIsBoundedInAge(t *testing.T) {
	ctx := context.Background()
	js := bustest.Conn(t).JS
	now := time.Now()
	s, err := cas.Open(ctx, js, cas.RememberFor(time.Minute), cas.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	other, err := cas.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("remembered")
	d := digest(blob)
	if err := s.Put(ctx, d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if err := other.Delete(ctx, d); err != nil { // another gateway's collector
		t.Fatal(err)
	}
	if ok, _ := s.Has(ctx, d, -1); !ok {
		t.Fatal("Has within RememberFor should answer from memory")
	}
	now = now.Add(time.Minute)
	if ok, _ := s.Has(ctx, d, -1); ok {
		t.Fatal("Has vouched for a deleted blob after RememberFor")
	}
	if err := s.Put(ctx, d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if err := other.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	s.Forget(d)
	if ok, _ := s.Has(ctx, d, -1); ok {
		t.Fatal("Has vouched for a forgotten, deleted blob")
	}
}

// TestTouchAndList: List reports owner and kind; Touch moves a blob's
// ModTime and reports a missing blob as absent.
func TestTouchAndList(t *testing.T) {
	ctx := context.Background()
	s, err := cas.Open(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("manifest bytes")
	d := digest(blob)
	if err := s.PutWith(ctx, d, int64(len(blob)), bytes.NewReader(blob), cas.Meta{Owner: "team-a", Manifest: true}); err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Owner != "team-a" || !list[0].Manifest || list[0].Size != int64(len(blob)) {
		t.Fatalf("List = %+v, %v", list, err)
	}
	before := list[0].ModTime
	if ok, err := s.Touch(ctx, d); !ok || err != nil {
		t.Fatalf("Touch = %v, %v", ok, err)
	}
	list, _ = s.List(ctx)
	if !list[0].ModTime.After(before) || list[0].Owner != "team-a" || !list[0].Manifest {
		t.Fatalf("after Touch: %+v (ModTime was %s)", list[0], before)
	}
	if ok, err := s.Touch(ctx, digest([]byte("absent"))); ok || err != nil {
		t.Fatalf("Touch of an absent blob = %v, %v", ok, err)
	}
}
