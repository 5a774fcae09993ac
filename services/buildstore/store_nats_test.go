package buildstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

func TestUpdateIsCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	s, err := buildstore.Open(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	id := buildstore.NewID(time.Now())
	if _, err := s.Create(ctx, &kilnv1.Build{Id: id, State: kilnv1.BuildState_BUILD_STATE_QUEUED}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, &kilnv1.Build{Id: id}); err == nil {
		t.Fatal("Create of an existing id succeeded")
	}

	// Many concurrent claims of one queued build: exactly one wins.
	var wg sync.WaitGroup
	wins := make(chan string, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent := string(rune('a' + i))
			_, err := s.Update(ctx, id, func(b *kilnv1.Build) error {
				if b.State != kilnv1.BuildState_BUILD_STATE_QUEUED {
					return errors.New("taken")
				}
				b.State = kilnv1.BuildState_BUILD_STATE_ASSIGNED
				b.Agent = agent
				b.Attempt++
				return nil
			})
			if err == nil {
				wins <- agent
			}
		}()
	}
	wg.Wait()
	close(wins)
	var winners []string
	for w := range wins {
		winners = append(winners, w)
	}
	b, _, err := s.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(winners) != 1 || b.Agent != winners[0] || b.Attempt != 1 {
		t.Fatalf("winners %v, record agent %q attempt %d", winners, b.Agent, b.Attempt)
	}

	// Illegal transitions are refused.
	if _, err := s.Update(ctx, id, func(b *kilnv1.Build) error {
		b.State = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		return nil
	}); !errors.Is(err, buildstore.ErrBadTransition) {
		t.Fatalf("ASSIGNED→SUCCEEDED = %v, want ErrBadTransition", err)
	}
	if _, _, err := s.Get(ctx, buildstore.NewID(time.Now())); !errors.Is(err, buildstore.ErrNotFound) {
		t.Fatalf("Get of an unknown id = %v, want ErrNotFound", err)
	}
}

// TestListSeesRecordsUpdatedWhileListing: records changing all the time
// must never drop out of a listing.
func TestListSeesRecordsUpdatedWhileListing(t *testing.T) {
	ctx := context.Background()
	s, err := buildstore.Open(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	ids := make([]string, n)
	for i := range ids {
		ids[i] = buildstore.NewID(time.Now().Add(time.Duration(i) * time.Millisecond))
		if _, err := s.Create(ctx, &kilnv1.Build{Id: ids[i], State: kilnv1.BuildState_BUILD_STATE_QUEUED}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keep renewing every record
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = s.Update(ctx, ids[i%n], func(b *kilnv1.Build) error { b.Error = fmt.Sprint(i); return nil })
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for range 20 {
		all, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != n {
			t.Fatalf("List returned %d of %d records while they were being updated", len(all), n)
		}
	}
}
