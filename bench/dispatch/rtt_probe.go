package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// rttProbe times one KV read and one KV write every 10 ms while the load
// runs, on its own connection: the price of each JetStream round trip the
// gateway and the dispatcher pay in sequence. It writes to KILN_IDEMPOTENCY
// under a key no idempotency key hashes to (those are sha256 hex).
type rttProbe struct {
	kv jetstream.KeyValue

	mu          sync.Mutex
	reads, puts []float64
}

const probeKey = "bench-rtt-probe"

func newRTTProbe(ctx context.Context, conn *bus.Conn) (*rttProbe, error) {
	kv, err := conn.JS.KeyValue(ctx, bus.BucketIdempotency)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketIdempotency, err)
	}
	if _, err := kv.Put(ctx, probeKey, []byte("probe")); err != nil {
		return nil, fmt.Errorf("round-trip probe: %w", err)
	}
	return &rttProbe{kv: kv}, nil
}

// run probes until ctx ends.
func (p *rttProbe) run(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		if _, err := p.kv.Get(ctx, probeKey); err != nil {
			continue
		}
		read := time.Now()
		if _, err := p.kv.Put(ctx, probeKey, []byte("probe")); err != nil {
			continue
		}
		p.mu.Lock()
		p.reads = append(p.reads, ms(read.Sub(start)))
		p.puts = append(p.puts, ms(time.Since(read)))
		p.mu.Unlock()
	}
}

func (p *rttProbe) result() (read, write dist) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return distOf(p.reads), distOf(p.puts)
}
