package service_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/kilnbuild/kiln/services/service"
)

// stopLog records the order parts stop in, and checks that each part is
// told to stop only once every part added after it has returned.
type stopLog struct {
	mu       sync.Mutex
	returned map[string]bool
	order    []string
	errs     []error
}

func (l *stopLog) part(name string, after []string, fail error, started chan<- struct{}) func(context.Context) error {
	return func(ctx context.Context) error {
		if started != nil {
			close(started)
		}
		if fail == nil {
			<-ctx.Done()
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, later := range after {
			if !l.returned[later] {
				l.errs = append(l.errs, fmt.Errorf("%s told to stop before %s had returned", name, later))
			}
		}
		l.returned[name] = true
		l.order = append(l.order, name)
		return fail
	}
}

// TestGroupStopsPartsLastAddedFirst stops a group like kilnd's on its
// context's end: the agent first, NATS last, each after the ones added
// after it have returned.
func TestGroupStopsPartsLastAddedFirst(t *testing.T) {
	l := &stopLog{returned: map[string]bool{}}
	ctx, cancel := context.WithCancel(t.Context())
	g := service.NewGroup(ctx, nil)
	names := []string{"nats", "gateway", "scheduler", "agent"}
	for i, name := range names {
		g.Go(name, l.part(name, names[i+1:], nil, nil))
	}
	if got := g.Parts(); !slices.Equal(got, names) {
		t.Fatalf("parts %v, want %v", got, names)
	}
	cancel()
	if err := g.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if want := []string{"agent", "scheduler", "gateway", "nats"}; !slices.Equal(l.order, want) {
		t.Fatalf("stopped %v, want %v", l.order, want)
	}
	if err := errors.Join(l.errs...); err != nil {
		t.Fatal(err)
	}
}

// TestGroupStopsWhenAPartFails has a middle part fail: the group stops the
// others in order and Wait returns the failure, named.
func TestGroupStopsWhenAPartFails(t *testing.T) {
	l := &stopLog{returned: map[string]bool{}}
	g := service.NewGroup(t.Context(), nil)
	boom := errors.New("boom")
	agentUp := make(chan struct{})
	g.Go("nats", l.part("nats", []string{"scheduler", "agent"}, nil, nil))
	g.Go("agent", l.part("agent", nil, nil, agentUp))
	<-agentUp
	g.Go("scheduler", l.part("scheduler", nil, boom, nil))
	err := g.Wait(t.Context())
	if !errors.Is(err, boom) || err.Error() != "scheduler: boom" {
		t.Fatalf("Wait: %v, want scheduler: boom", err)
	}
	if want := []string{"scheduler", "agent", "nats"}; !slices.Equal(l.order, want) {
		t.Fatalf("stopped %v, want %v", l.order, want)
	}
	if err := errors.Join(l.errs...); err != nil {
		t.Fatal(err)
	}
	// A part that ends by itself without an error still stops the group,
	// and is named.
	g = service.NewGroup(t.Context(), nil)
	g.Go("server", func(context.Context) error { return nil })
	if err := g.Wait(t.Context()); err == nil || err.Error() != "server stopped by itself" {
		t.Fatalf("Wait: %v, want server stopped by itself", err)
	}
}
