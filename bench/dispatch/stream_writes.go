package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// streamSeqs is every JetStream stream's last sequence: how many writes
// it has taken (a KV bucket's stream counts puts and deletes).
func streamSeqs(ctx context.Context, js jetstream.JetStream) map[string]uint64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seqs := map[string]uint64{}
	l := js.ListStreams(ctx)
	for info := range l.Info() {
		seqs[info.Config.Name] = info.State.LastSeq
	}
	return seqs
}

// streamWrites is, per stream, the writes per build between two
// snapshots over builds builds (streams without writes left out).
func streamWrites(before, after map[string]uint64, builds int) map[string]float64 {
	out := map[string]float64{}
	for name, seq := range after {
		if n := seq - before[name]; n > 0 && builds > 0 {
			out[name] = float64(n) / float64(builds)
		}
	}
	return out
}
