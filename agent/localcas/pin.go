package localcas

import "sync"

// Pin keeps blobs in the store until Release.
type Pin struct {
	s     *Store
	blobs []*blob
	once  sync.Once
}

// Release unpins the blobs, which may then be evicted, and evicts down to
// the bound. It may be called more than once, and on a nil Pin.
func (p *Pin) Release() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.s.mu.Lock()
		defer p.s.mu.Unlock()
		for _, e := range p.blobs {
			p.s.unpinLocked(e)
		}
		p.s.evictLocked()
	})
}
