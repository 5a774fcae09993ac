package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestFIFOOrderAndDedup(t *testing.T) {
	q := NewFIFO()
	for _, id := range []string{"a", "b", "a", "c"} {
		q.Push(id)
	}
	if q.Len() != 3 {
		t.Fatalf("Len = %d, want 3 (duplicate push must be ignored)", q.Len())
	}
	ctx := context.Background()
	for _, want := range []string{"a", "b", "c"} {
		got, err := q.Pop(ctx)
		if err != nil || got != want {
			t.Fatalf("Pop = %q, %v; want %q", got, err, want)
		}
	}
	if !q.Push("a") {
		t.Fatal("an id popped before must be accepted again")
	}
}

func TestFIFOPopWaitsForPush(t *testing.T) {
	q := NewFIFO()
	got := make(chan string)
	go func() {
		id, _ := q.Pop(context.Background())
		got <- id
	}()
	q.Push("x")
	select {
	case id := <-got:
		if id != "x" {
			t.Fatalf("Pop = %q, want x", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Pop did not return after Push")
	}
}

func TestFIFOPopHonoursContext(t *testing.T) {
	q := NewFIFO()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Pop(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pop on cancelled ctx = %v, want context.Canceled", err)
	}
}

func TestFIFOEachIDPoppedOnce(t *testing.T) {
	q := NewFIFO()
	const n = 1000
	var wg sync.WaitGroup
	seen := make(chan string, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id, err := q.Pop(ctx)
				if err != nil {
					return
				}
				seen <- id
			}
		}()
	}
	for i := 0; i < n; i++ {
		q.Push(string(rune('A'+i%26)) + string(rune(i)))
	}
	got := map[string]int{}
	for i := 0; i < n; i++ {
		got[<-seen]++
	}
	cancel()
	wg.Wait()
	for id, c := range got {
		if c != 1 {
			t.Fatalf("id %q popped %d times", id, c)
		}
	}
	if len(got) != n {
		t.Fatalf("popped %d distinct ids, want %d", len(got), n)
	}
}
