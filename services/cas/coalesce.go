package cas

import (
	"context"
	"sync"
	"time"
)

// readBatcher turns concurrent Gets into batched reads: a Get asks for its
// digest and, when no batched read is under way, becomes the reader and
// reads every digest asked for so far in one GetMany, again and again
// until none waits. An agent fetching a context's thousands of small
// blobs, many at a time (agent/localcas), so makes a request per batch
// instead of one or two per blob. Whatever a batch does not return (blobs
// not written by PutBatch, missing ones, a failed read) each Get reads on
// its own, as before.
type readBatcher struct {
	s       *Store
	mu      sync.Mutex
	waiting map[string][]chan []byte
	reading bool
}

// get returns the blob's bytes from a batched read, or nil and false.
func (b *readBatcher) get(ctx context.Context, digest string) ([]byte, bool) {
	ch := make(chan []byte, 1)
	b.mu.Lock()
	if b.waiting == nil {
		b.waiting = map[string][]chan []byte{}
	}
	b.waiting[digest] = append(b.waiting[digest], ch)
	lead := !b.reading
	b.reading = true
	b.mu.Unlock()
	if lead {
		b.readAll(ctx)
	}
	select {
	case data, ok := <-ch:
		return data, ok && data != nil
	case <-ctx.Done():
		return nil, false
	}
}

// readAll reads what is asked for until nothing is.
func (b *readBatcher) readAll(ctx context.Context) {
	for {
		b.mu.Lock()
		batch := b.waiting
		b.waiting = nil
		if len(batch) == 0 {
			b.reading = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		digests := make([]string, 0, len(batch))
		for d := range batch {
			digests = append(digests, d)
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchReadTimeout)
		got, err := b.s.GetMany(rctx, digests)
		cancel()
		for d, chs := range batch {
			var data []byte
			if err == nil {
				data = got[d]
			}
			for _, ch := range chs {
				ch <- data // buffered: never blocks
			}
		}
	}
}

// batchReadTimeout bounds one batched read: its reader reads for every
// waiting Get, whatever its own context.
const batchReadTimeout = 30 * time.Second
