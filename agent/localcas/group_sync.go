package localcas

import (
	"os"
	"sync"
)

// groupSync makes written files durable together: a file's writer asks
// for a sync that starts after its write, and one sync of the file system
// (syncfs on Linux) serves every writer waiting when it starts. Fetching
// a context of thousands of small blobs, 32 at a time, so costs a sync per
// round instead of an fsync per blob (5 000 one-line blobs: seconds of
// journal commits on a busy disk).
type groupSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // syncs begun
	done    uint64 // syncs finished (started, when none runs)
	running bool
	err     error // of the last finished sync
}

// sync returns once a sync of f's file system that began after the call
// has finished, with that sync's error.
func (g *groupSync) sync(f *os.File) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	target := g.started + 1 // a sync running now may have begun before our write
	for g.done < target {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		g.mu.Unlock()
		err := syncFS(f)
		g.mu.Lock()
		g.running = false
		g.done, g.err = g.started, err
		g.cond.Broadcast()
	}
	return g.err
}
