package localcas

import "container/list"

// Small blobs are cheap to fetch again and dear to write: the farm's CAS
// answers thousands of them in a few batched reads (a third of a second
// for 5 000 one-line files here), while creating 5 000 files costs the
// agent's disk one to three seconds, before the work directory writes
// each of them once more. So up to Config.MemoryBytes of small blobs
// (UnsyncedMaxBytes or less) are kept in memory only: pinned, opened and
// evicted like the others, gone when the agent stops (the next build that
// needs them fetches them again). When pinned blobs fill the memory, a
// small blob goes to disk as before.

// memoryTier is the store's in-memory blobs. Guarded by Store.mu.
type memoryTier struct {
	max  int64     // bound on size; 0 or less: no blob in memory
	size int64     // bytes of the blobs in memory, plus those reserved
	lru  list.List // unpinned blobs in memory, most recently used first
}

// reserveMemory makes room for n bytes of a small blob about to be kept in
// memory, evicting the least recently used unpinned ones, and reports
// whether it did; false: the blob goes to disk.
func (s *Store) reserveMemory(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := &s.mem
	if m.max <= 0 {
		return false
	}
	for m.size+n > m.max {
		back := m.lru.Back()
		if back == nil {
			return false
		}
		e := m.lru.Remove(back).(*blob)
		delete(s.blobs, e.digest)
		m.size -= e.size
	}
	m.size += n
	return true
}
