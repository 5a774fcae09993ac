package routing

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// decoder turns arbitrary bytes into small routing inputs.
type decoder struct{ data []byte }

func (d *decoder) byte() byte {
	if len(d.data) == 0 {
		return 0
	}
	b := d.data[0]
	d.data = d.data[1:]
	return b
}

func (d *decoder) n(limit int) int { return int(d.byte()) % limit }

// pick returns a few of vocab's words.
func (d *decoder) pick(vocab []string, most int) []string {
	var out []string
	for range d.n(most + 1) {
		out = append(out, vocab[d.n(len(vocab))])
	}
	return out
}

// instant is zero (not known) or a time around t0.
func (d *decoder) instant() time.Time {
	if n := d.n(64); n > 0 {
		return t0.Add(time.Duration(n-20) * 200 * time.Millisecond)
	}
	return time.Time{}
}

func (d *decoder) labels() map[string]string {
	keys, values := []string{"arch", "gpu", ""}, []string{"arm64", "amd64", ""}
	var m map[string]string
	for range d.n(3) {
		if m == nil {
			m = map[string]string{}
		}
		m[keys[d.n(len(keys))]] = values[d.n(len(values))]
	}
	return m
}

func decodeScenario(data []byte) scenario {
	d := &decoder{data: data}
	hashes := []string{"h0", "h1", "h2", "h3", "h4", ""}
	lineages := []string{"L0", "L1", "L2", ""}
	bases := []string{"debian", "alpine", ""}
	tenants := []string{"t0", "t1", "t2"}
	s := scenario{
		cfg: Config{
			Delay:         time.Duration(int(d.byte())-100) * 100 * time.Millisecond,
			TenantWeights: map[string]int{"t0": d.n(4) - 1, "t1": d.n(4)},
			TenantCaps:    map[string]int{"t0": d.n(4) - 1, "t2": d.n(3)},
			DefaultCap:    d.n(4) - 1,
			LoadFactor:    float64(d.n(8)) / 4,
		},
		running: map[string]int{"t0": d.n(4) - 1, "t1": d.n(4), "t2": d.n(3)},
		now:     t0.Add(time.Duration(d.n(50)) * 100 * time.Millisecond),
	}
	for i := range d.n(7) {
		s.agents = append(s.agents, Agent{
			Name: fmt.Sprint("a", i), FreeSlots: d.n(4) - 1, Slots: d.n(4), Running: d.n(5) - 1,
			Labels: d.labels(), Lineages: d.pick(lineages, 3), BaseImages: d.pick(bases, 2), Chains: d.pick(hashes, 5),
			NextFree: d.instant(),
		})
	}
	for i := range d.n(12) {
		if i > 0 && d.n(8) == 0 { // the same build twice
			s.queue = append(s.queue, s.queue[d.n(i)])
			continue
		}
		s.queue = append(s.queue, Build{
			ID: fmt.Sprint("b", i), Tenant: tenants[d.n(len(tenants))], Priority: int32(d.n(3)) - 1,
			Lineage: lineages[d.n(len(lineages))], BaseImages: d.pick(bases, 2), Chain: d.pick(hashes, 5),
			Labels: d.labels(), QueuedAt: t0.Add(time.Duration(d.n(50)) * 100 * time.Millisecond),
			Warm: time.Duration(d.n(8)-1) * 500 * time.Millisecond, Cold: time.Duration(d.n(12)-1) * 500 * time.Millisecond,
		})
	}
	return s
}

// FuzzRoute checks Route's invariants on arbitrary small inputs:
// go test -fuzz FuzzRoute ./routing
func FuzzRoute(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x64\x01\x02\x01\x01\x01\x00\x04\x01\x02\x01\x0a\x05\x03\x02\x01\x01\x00\x01\x01\x02\x02\x03\x04\x09\x01\x02\x00\x01\x02\x03\x04"))
	r := rand.New(rand.NewPCG(1, 2))
	for range 16 {
		seed := make([]byte, 96)
		for i := range seed {
			seed[i] = byte(r.Uint32())
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := decodeScenario(data)
		got := Route(s.cfg, s.queue, s.agents, s.running, s.now)
		if err := checkInvariants(s.cfg, s.queue, s.agents, s.running, s.now, got); err != nil {
			t.Fatal(err)
		}
		reversed := slices.Clone(s.agents)
		slices.Reverse(reversed)
		if again := Route(s.cfg, s.queue, reversed, s.running, s.now); !slices.Equal(again, got) {
			t.Fatalf("agent order changes the result:\n%v\n%v", got, again)
		}
		d := NewIndex(s.agents).Decide(s.cfg, s.queue, s.running, s.now)
		if !slices.Equal(d.Assignments, got) {
			t.Fatalf("Decide differs from Route")
		}
		if !d.Wake.IsZero() && !d.Wake.After(s.now) {
			t.Fatalf("wake %v not after now %v", d.Wake, s.now)
		}
	})
}
