package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// fsyncProbe times one small write and fsync every 10 ms while the load
// runs, in a file beside the NATS store (same file system): what each
// JetStream write costs its node with sync_interval always, once in the
// raft log and once in the stream's store on every replica.
type fsyncProbe struct {
	f *os.File

	mu    sync.Mutex
	syncs []float64
}

func newFsyncProbe(dir string) (*fsyncProbe, error) {
	f, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		return nil, fmt.Errorf("fsync probe: %w", err)
	}
	return &fsyncProbe{f: f}, nil
}

// run probes until ctx ends, then closes the file.
func (p *fsyncProbe) run(ctx context.Context) {
	defer p.f.Close()
	record := make([]byte, 300) // about a build record
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		if _, err := p.f.Write(record); err != nil {
			return
		}
		if err := p.f.Sync(); err != nil {
			return
		}
		p.mu.Lock()
		p.syncs = append(p.syncs, ms(time.Since(start)))
		p.mu.Unlock()
	}
}

func (p *fsyncProbe) result() dist {
	p.mu.Lock()
	defer p.mu.Unlock()
	return distOf(p.syncs)
}
