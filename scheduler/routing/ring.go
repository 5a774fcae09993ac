package routing

import (
	"cmp"
	"slices"
)

// vnodes is how many points each agent has on the hash ring.
const vnodes = 64

// ringEntry is one virtual node: a point on the ring owned by an agent.
type ringEntry struct {
	hash  uint64
	slot  int32
	vnode int32
}

// buildRing places vnodes points per agent on the ring. A point depends only
// on the agent's name, so adding an agent moves only the lineages that now
// hash to it. Equal points are ordered by name, so the ring does not depend
// on slot numbers.
func (x *Index) buildRing() {
	x.ring = x.ring[:0]
	for s := range x.agents {
		e := &x.agents[s]
		if !e.live {
			continue
		}
		h := fnvString(fnvOffset, e.Name)
		for v := range vnodes {
			x.ring = append(x.ring, ringEntry{hash: mix(fnvByte(fnvByte(h, '#'), byte(v))), slot: int32(s), vnode: int32(v)})
		}
	}
	slices.SortFunc(x.ring, func(a, b ringEntry) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		if c := cmp.Compare(x.agents[a.slot].Name, x.agents[b.slot].Name); c != 0 {
			return c
		}
		return cmp.Compare(a.vnode, b.vnode)
	})
	x.ringDirty = false
}

// ringStart is the index of the first point at or after h (wrapping).
func (x *Index) ringStart(h uint64) int {
	i, _ := slices.BinarySearchFunc(x.ring, h, func(e ringEntry, h uint64) int { return cmp.Compare(e.hash, h) })
	if i == len(x.ring) {
		i = 0
	}
	return i
}

// lineageHash is where a build's lineage sits on the ring. A build without
// a lineage hashes by its ID, so such builds spread out.
func lineageHash(b *Build) uint64 {
	if b.Lineage != "" {
		return mix(fnvString(fnvOffset, b.Lineage))
	}
	return mix(fnvString(fnvByte(fnvOffset, 0), b.ID))
}

// FNV-1a (hash/fnv without the interface and allocation), then a
// splitmix64 finalizer: FNV alone clusters similar short names on the ring.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}

func fnvByte(h uint64, b byte) uint64 { return (h ^ uint64(b)) * fnvPrime }

func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
