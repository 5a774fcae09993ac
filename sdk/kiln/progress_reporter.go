package kiln

import "sync"

// progressReporter adds up progress from several goroutines and hands it to
// fn one call at a time. A nil fn reports nothing.
type progressReporter struct {
	fn func(ContextProgress)

	mu sync.Mutex // serializes fn and guards p
	p  ContextProgress
}

func (r *progressReporter) add(files int, bytes int64) {
	if r == nil || r.fn == nil || (files == 0 && bytes == 0) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Files += files
	r.p.Bytes += bytes
	r.fn(r.p)
}

// set restarts the counts at files and bytes (after a resumed upload).
func (r *progressReporter) set(files int, bytes int64) {
	if r == nil || r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Files, r.p.Bytes = files, bytes
	r.fn(r.p)
}

// total returns the bytes to report in all.
func (r *progressReporter) total() int64 {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p.TotalBytes
}
