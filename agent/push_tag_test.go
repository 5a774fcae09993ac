package agent

import (
	"testing"
	"time"
)

// TestTagLocksSerialiseOneTag: a second push of a tag waits for the first;
// another tag does not; the table forgets a tag nobody holds.
func TestTagLocksSerialiseOneTag(t *testing.T) {
	var l tagLocks
	unlockA := l.lock("r/app:1")
	other := make(chan struct{})
	go func() { l.lock("r/app:2")(); close(other) }()
	select {
	case <-other:
	case <-time.After(10 * time.Second):
		t.Fatal("a lock on another tag waited for r/app:1")
	}
	second := make(chan struct{})
	go func() { defer close(second); l.lock("r/app:1")() }()
	// The second holder of r/app:1 is waiting once the table counts it.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for n := 0; n != 2; {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("r/app:1 has %d users, want 2", n)
		}
		l.mu.Lock()
		n = l.locks["r/app:1"].users
		l.mu.Unlock()
	}
	select {
	case <-second:
		t.Fatal("a second lock of r/app:1 did not wait for the first")
	default:
	}
	unlockA()
	select {
	case <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("the second lock of r/app:1 never got it")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.locks) != 0 {
		t.Fatalf("the table still holds %v", l.locks)
	}
}
