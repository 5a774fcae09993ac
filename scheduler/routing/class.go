package routing

import "encoding/binary"

// class is the set of agents eligible for one set of required labels, with
// the free slots and load among them during the current decision.
type class struct {
	all     bool     // no labels required: every agent
	bits    []uint64 // by slot, when !all
	members []int32  // live slots in the class

	epoch uint64 // decision the fields below belong to
	free  int64  // free slots left among members
	load  int64  // running + assigned among members
}

func (c *class) has(s int32) bool {
	return c.all || c.bits[s>>6]&(1<<(uint(s)&63)) != 0
}

// classFor returns the class of agents carrying all of labels.
func (x *Index) classFor(labels map[string]string) *class {
	if len(labels) == 0 {
		if x.allClass == nil {
			c := &class{all: true}
			for s := range x.agents {
				if x.agents[s].live {
					c.members = append(c.members, int32(s))
				}
			}
			x.allClass = c
		}
		return x.allClass
	}
	key := x.labelKey(labels)
	if c, ok := x.classes[string(key)]; ok {
		return c
	}
	c := &class{bits: make([]uint64, (len(x.agents)+63)/64)}
	for s := range x.agents {
		e := &x.agents[s]
		if e.live && hasLabels(e.Labels, labels) {
			c.members = append(c.members, int32(s))
			c.bits[s>>6] |= 1 << (uint(s) & 63)
		}
	}
	x.classes[string(key)] = c
	return c
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// labelKey encodes labels canonically (sorted by name, each name and value
// length-prefixed) in a reused buffer. Label sets are small: insertion sort.
func (x *Index) labelKey(labels map[string]string) []byte {
	keys := x.sc.labelNames[:0]
	for k, v := range labels {
		keys = append(keys, [2]string{k, v})
		for j := len(keys) - 1; j > 0 && keys[j][0] < keys[j-1][0]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	buf := x.sc.labelBuf[:0]
	for _, kv := range keys {
		k, v := kv[0], kv[1]
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
	}
	clear(keys)
	x.sc.labelNames, x.sc.labelBuf = keys[:0], buf
	return buf
}
