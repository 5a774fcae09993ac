package routing

import "slices"

// cand is an agent with a positive cache score for a build, and the parts
// of that score (see [Index] for the formula).
type cand struct {
	slot    int32
	score   int32
	chain   int32 // reusable instructions
	bases   int32 // base images present
	lineage bool
}

// memoEntry caches the candidates of builds sharing a lineage, chain and
// base images: a queue holds many builds of one Dockerfile.
type memoEntry struct {
	chain, bases []string
	cands        []cand
}

// memoPerLineage bounds how many variants of one lineage are cached, so a
// queue of one lineage with ever-different chains stays linear.
const memoPerLineage = 8

// candidates returns the agents with a positive score for b, highest score
// first (order within a score is unspecified). The slice is shared: do not
// modify it.
func (x *Index) candidates(b *Build) []cand {
	list := x.sc.memo[b.Lineage]
	for _, m := range list {
		if slices.Equal(m.chain, b.Chain) && slices.Equal(m.bases, b.BaseImages) {
			return m.cands
		}
	}
	cands := x.score(b)
	if len(list) < memoPerLineage {
		x.sc.memo[b.Lineage] = append(list, &memoEntry{chain: b.Chain, bases: b.BaseImages, cands: cands})
	}
	return cands
}

// score walks the posting lists of b's chain hashes, lineage and base
// images, so its cost is the number of (hash, agent) pairs that match, not
// the number of agents.
func (x *Index) score(b *Build) []cand {
	sc := &x.sc
	stamp := sc.nextStamp()
	touched := sc.touched[:0]
	mark, chain, lin, bases := sc.mark, sc.chainLen, sc.lineage, sc.baseHits
	for i, h := range b.Chain {
		for _, s := range x.chains[h] {
			if mark[s] != stamp {
				mark[s], chain[s], lin[s], bases[s] = stamp, 0, false, 0
				touched = append(touched, s)
			}
			chain[s] = int32(i + 1) // i only grows: the longest prefix wins
		}
	}
	if b.Lineage != "" {
		for _, s := range x.lineages[b.Lineage] {
			if mark[s] != stamp {
				mark[s], chain[s], lin[s], bases[s] = stamp, 0, false, 0
				touched = append(touched, s)
			}
			lin[s] = true
		}
	}
	for j, img := range b.BaseImages {
		if img == "" || seenBefore(b.BaseImages, j) {
			continue
		}
		for _, s := range x.bases[img] {
			if mark[s] != stamp {
				mark[s], chain[s], lin[s], bases[s] = stamp, 0, false, 0
				touched = append(touched, s)
			}
			bases[s]++
		}
	}
	sc.touched = touched
	if len(touched) == 0 {
		return nil
	}
	// Counting sort by score, highest first.
	maxScore := int32(0)
	for _, s := range touched {
		maxScore = max(maxScore, scoreOf(chain[s], lin[s], bases[s]))
	}
	counts := slices.Grow(sc.counts[:0], int(maxScore)+2)[:maxScore+2]
	clear(counts)
	for _, s := range touched {
		counts[maxScore-scoreOf(chain[s], lin[s], bases[s])+1]++
	}
	for k := 1; k < len(counts); k++ {
		counts[k] += counts[k-1]
	}
	out := make([]cand, len(touched))
	for _, s := range touched {
		v := scoreOf(chain[s], lin[s], bases[s])
		k := maxScore - v
		out[counts[k]] = cand{slot: s, score: v, chain: chain[s], bases: bases[s], lineage: lin[s]}
		counts[k]++
	}
	sc.counts = counts
	return out
}

func scoreOf(chain int32, lineage bool, bases int32) int32 {
	if lineage {
		return chain + 1 + bases
	}
	return chain + bases
}

// seenBefore reports whether imgs[j] already occurs in imgs[:j].
func seenBefore(imgs []string, j int) bool {
	return slices.Contains(imgs[:j], imgs[j])
}
