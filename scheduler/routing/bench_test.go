package routing

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// benchFarm is a farm for benchmarks: agents with ~64 chain hashes each and
// a queue of builds over 2 000 lineages, half of them spill-eligible.
func benchFarm(nAgents, nBuilds int) ([]Agent, []Build) {
	r := rand.New(rand.NewPCG(1, 1))
	zipf := rand.NewZipf(r, 1.1, 8, 1999)
	chainOf := func(l int) []string { return chain(fmt.Sprintf("%064d-", l), 3+l%10) }
	agents := make([]Agent, nAgents)
	for i := range agents {
		a := Agent{Name: fmt.Sprintf("agent-%05d", i), Slots: 4, Running: 4, Labels: map[string]string{"arch": "amd64"}}
		if i%10 == 0 {
			a.Labels["arch"] = "arm64"
		}
		for len(a.Chains) < 64 {
			l := int(zipf.Uint64())
			a.Lineages = append(a.Lineages, fmt.Sprint("L", l))
			a.Chains = append(a.Chains, chainOf(l)...)
			a.BaseImages = append(a.BaseImages, fmt.Sprint("base-", l%30))
		}
		agents[i] = a
	}
	queue := make([]Build, nBuilds)
	for i := range queue {
		l := int(zipf.Uint64())
		queue[i] = Build{
			ID: fmt.Sprintf("build-%07d", i), Tenant: fmt.Sprint("tenant-", l%20), Priority: int32(i % 7 / 6),
			Lineage: fmt.Sprint("L", l), BaseImages: []string{fmt.Sprint("base-", l%30)}, Chain: chainOf(l),
			QueuedAt: t0.Add(-time.Duration(i%4)*time.Second - time.Duration(r.IntN(1e9))),
		}
		if l%10 == 0 {
			queue[i].Labels = map[string]string{"arch": "arm64"}
		}
	}
	return agents, queue
}

// BenchmarkDecide measures decisions over 1 000 agents and 100 000 queued
// builds: answering one pull, and a round in which 10% of agents pull.
func BenchmarkDecide(b *testing.B) {
	agents, queue := benchFarm(1000, 100_000)
	x := NewIndex(agents)
	for _, tc := range []struct {
		name  string
		every int // every n-th agent has a free slot
	}{{"single-pull", len(agents)}, {"10%-pull", 10}} {
		b.Run(tc.name, func(b *testing.B) {
			for i := range agents {
				a := agents[i]
				if i%tc.every == 3 {
					a.FreeSlots, a.Running = 1, 3
				}
				x.Set(a)
			}
			n := 0
			for b.Loop() {
				n += len(x.Decide(Config{}, queue, nil, t0).Assignments)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1000/float64(max(n, 1)), "µs/assignment")
		})
	}
}
