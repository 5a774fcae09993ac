// Package queue holds the scheduler's queue of builds waiting for an agent.
package queue

import (
	"context"
	"sync"
)

// FIFO is a first-in, first-out queue of build ids whose Pop blocks until
// an id is available. An id is held at most once. Safe for concurrent use.
type FIFO struct {
	mu     sync.Mutex
	items  []string
	held   map[string]bool
	notify chan struct{} // closed and replaced on every Push
}

// NewFIFO returns an empty queue.
func NewFIFO() *FIFO {
	return &FIFO{held: map[string]bool{}, notify: make(chan struct{})}
}

// Push appends id unless it is already queued; it reports whether it did.
func (q *FIFO) Push(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[id] {
		return false
	}
	q.held[id] = true
	q.items = append(q.items, id)
	close(q.notify)
	q.notify = make(chan struct{})
	return true
}

// Pop removes and returns the oldest id, waiting until there is one or ctx ends.
func (q *FIFO) Pop(ctx context.Context) (string, error) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			id := q.items[0]
			q.items[0] = ""
			q.items = q.items[1:]
			delete(q.held, id)
			q.mu.Unlock()
			return id, nil
		}
		wait := q.notify
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-wait:
		}
	}
}

// Len is the number of queued ids.
func (q *FIFO) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
