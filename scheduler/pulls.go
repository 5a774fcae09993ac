package scheduler

import (
	"container/heap"
	"time"
)

// The agents' waiting pulls: by agent (d.pulls, in arrival order) and by
// deadline (d.expiry, a heap), so the dispatcher finds the expired ones
// without walking every waiting pull — a thousand agents hold a thousand.

// expiry is a min-heap of pulls by deadline (container/heap); each pull
// knows its index in it.
type expiry []*pull

func (e expiry) Len() int           { return len(e) }
func (e expiry) Less(i, j int) bool { return e[i].deadline.Before(e[j].deadline) }
func (e expiry) Swap(i, j int) {
	e[i], e[j] = e[j], e[i]
	e[i].index, e[j].index = i, j
}
func (e *expiry) Push(x any) {
	p := x.(*pull)
	p.index = len(*e)
	*e = append(*e, p)
}
func (e *expiry) Pop() any {
	old := *e
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*e = old[:len(old)-1]
	p.index = -1
	return p
}

// addPull records a waiting pull.
func (d *dispatcher) addPull(p *pull) {
	d.pulls[p.agent] = append(d.pulls[p.agent], p)
	heap.Push(&d.expiry, p)
}

// dropPulls forgets an agent's waiting pulls without answering them.
func (d *dispatcher) dropPulls(agent string) {
	for _, p := range d.pulls[agent] {
		heap.Remove(&d.expiry, p.index)
	}
	delete(d.pulls, agent)
}

// takePull removes and returns an agent's oldest waiting pull, nil if none.
func (d *dispatcher) takePull(agent string) *pull {
	ps := d.pulls[agent]
	if len(ps) == 0 {
		return nil
	}
	p := ps[0]
	if len(ps) == 1 {
		delete(d.pulls, agent)
	} else {
		d.pulls[agent] = ps[1:]
	}
	heap.Remove(&d.expiry, p.index)
	return p
}

// expirePulls answers the pulls whose deadline has passed at wall, empty,
// and returns how long until the next one's (an hour if none waits).
func (d *dispatcher) expirePulls(wall time.Time) time.Duration {
	for len(d.expiry) > 0 && !wall.Before(d.expiry[0].deadline) {
		p := heap.Pop(&d.expiry).(*pull)
		ps := d.pulls[p.agent]
		for i, q := range ps {
			if q == p {
				ps = append(ps[:i:i], ps[i+1:]...)
				break
			}
		}
		if len(ps) == 0 {
			delete(d.pulls, p.agent)
		} else {
			d.pulls[p.agent] = ps
		}
		d.reply(p, nil)
		d.dirty[p.agent] = true
	}
	if len(d.expiry) == 0 {
		return time.Hour
	}
	return d.expiry[0].deadline.Sub(wall)
}
