package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// hops are the NATS round trips on one build's way to an agent, as a tap
// on the wire sees them: when each write was published (a subscriber on
// its subject gets a copy as the server receives it) and when JetStream
// acknowledged it (a subscriber on _INBOX.> gets a copy of the PubAck the
// stream leader sends once a quorum has stored it), and when the
// scheduler's intake had handed the build to its dispatcher (its ack on
// $JS.ACK.KILN_REQUESTS…, which names the message's stream sequence, which
// the intake publish's PubAck tied to the build). Together
// with the gateway's created_at, the dispatcher's decision and the agent's
// answered pull they split submit-to-assigned into its hops without
// touching the services.
type hops struct {
	claimSent, claimAcked   time.Time // KV create in KILN_INFLIGHT (the merge claim)
	createSent, createAcked time.Time // KV create of the record in KILN_BUILDS
	intakeAcked             time.Time // kiln.requests stored by a quorum (its publish is sample.intake)
	delivered               time.Time // the scheduler acknowledged the intake message: the build is in its dispatcher's queue
	assignSent, assignAcked time.Time // the CAS to ASSIGNED in KILN_BUILDS
}

// writeKind names a tapped write whose acknowledgement is awaited.
type writeKind int

const (
	claimWrite writeKind = iota
	createWrite
	intakeWrite
	assignWrite
)

type earlyReply struct {
	at   time.Time
	data []byte
}

type pendingWrite struct {
	id   string
	kind writeKind
}

// hopTap follows the hops of every build.
type hopTap struct {
	mu      sync.Mutex
	byID    map[string]*hops
	pending map[string]pendingWrite // reply subject → the write it acknowledges
	// early holds replies seen before the copy of their write (the server
	// may answer before it fans the publish out), pruned after a while.
	early     map[string]earlyReply
	lastPrune time.Time
	// intakeSeq names the build of each kiln.requests message by its
	// stream sequence, from the PubAck, for the scheduler's ack.
	intakeSeq   map[uint64]string
	intakeEarly map[uint64]time.Time // the scheduler's acks seen before the PubAck
}

var (
	inflightPrefix = "$KV." + bus.BucketInflight + "."
	buildsPrefix   = "$KV." + bus.BucketBuilds + "."
	intakeAckPfx   = "$JS.ACK." + bus.StreamRequests + "."
)

func newHopTap() *hopTap {
	return &hopTap{byID: map[string]*hops{}, pending: map[string]pendingWrite{}, intakeSeq: map[uint64]string{}, early: map[string]earlyReply{}, intakeEarly: map[uint64]time.Time{}}
}

// subscribe taps the writes on nc (a connection of the tap's own).
func (t *hopTap) subscribe(nc *nats.Conn) error {
	for _, subj := range []string{inflightPrefix + ">", buildsPrefix + ">", bus.SubjectRequests, "_INBOX.>", intakeAckPfx + ">"} {
		sub, err := nc.Subscribe(subj, t.seen)
		if err != nil {
			return fmt.Errorf("tap %s: %w", subj, err)
		}
		// The tap must never be the slow consumer that drops copies.
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			return err
		}
	}
	return nc.Flush()
}

func (t *hopTap) seen(m *nats.Msg) {
	at := time.Now()
	switch {
	case strings.HasPrefix(m.Subject, intakeAckPfx):
		// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…: the
		// scheduler took the intake message in.
		f := strings.Split(m.Subject, ".")
		if len(f) < 6 {
			return
		}
		seq, err := strconv.ParseUint(f[5], 10, 64)
		if err != nil {
			return
		}
		t.mu.Lock()
		id, ok := t.intakeSeq[seq]
		if !ok {
			t.intakeEarly[seq] = at // before the tap saw the publish's PubAck
		}
		t.mu.Unlock()
		if ok {
			t.note(id, func(h *hops) { setOnce(&h.delivered, at) })
		}
	case strings.HasPrefix(m.Subject, "_INBOX."):
		t.mu.Lock()
		w, ok := t.pending[m.Subject]
		delete(t.pending, m.Subject)
		if !ok {
			t.keepEarly(m.Subject, earlyReply{at, m.Data})
		}
		t.mu.Unlock()
		if ok {
			t.acked(w, m.Data, at)
		}
	case strings.HasPrefix(m.Subject, inflightPrefix):
		t.sent(string(m.Data), claimWrite, m.Reply, at)
	case strings.HasPrefix(m.Subject, buildsPrefix):
		b := &kilnv1.Build{}
		if bus.Decode(m.Data, b) != nil {
			return
		}
		switch {
		case b.State == kilnv1.BuildState_BUILD_STATE_QUEUED && m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) == "0":
			t.sent(b.Id, createWrite, m.Reply, at)
		case b.State == kilnv1.BuildState_BUILD_STATE_ASSIGNED && b.Attempt == 1:
			t.sent(b.Id, assignWrite, m.Reply, at)
		}
	case m.Subject == bus.SubjectRequests:
		req := &kilnv1.BuildRequested{}
		if bus.Decode(m.Data, req) == nil {
			t.sent(req.BuildId, intakeWrite, m.Reply, at)
		}
	}
}

// keepEarly holds a reply that matched no tapped write yet; t.mu is held.
func (t *hopTap) keepEarly(reply string, e earlyReply) {
	t.early[reply] = e
	if e.at.Sub(t.lastPrune) < time.Second {
		return
	}
	t.lastPrune = e.at
	for k, v := range t.early {
		if e.at.Sub(v.at) > 2*time.Second {
			delete(t.early, k)
		}
	}
}

// acked notes the acknowledgement (data, a PubAck) of write w at at.
func (t *hopTap) acked(w pendingWrite, data []byte, at time.Time) {
	var ack struct {
		Seq   uint64          `json:"seq"`
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(data, &ack) != nil || ack.Error != nil {
		return
	}
	if w.kind == intakeWrite {
		t.mu.Lock()
		t.intakeSeq[ack.Seq] = w.id
		delivered, early := t.intakeEarly[ack.Seq]
		delete(t.intakeEarly, ack.Seq)
		t.mu.Unlock()
		if early {
			t.note(w.id, func(h *hops) { setOnce(&h.delivered, delivered) })
		}
	}
	t.note(w.id, func(h *hops) {
		switch w.kind {
		case claimWrite:
			setOnce(&h.claimAcked, at)
		case createWrite:
			setOnce(&h.createAcked, at)
		case intakeWrite:
			setOnce(&h.intakeAcked, at)
		case assignWrite:
			setOnce(&h.assignAcked, at)
		}
	})
}

// sent notes a write of build id published at at, awaiting its ack on reply.
//
// A reply the tap saw first is the ack of this write: the copy of the
// publish came late, so the write counts as sent when it was acknowledged.
func (t *hopTap) sent(id string, kind writeKind, reply string, at time.Time) {
	var e earlyReply
	early := false
	if reply != "" {
		t.mu.Lock()
		if e, early = t.early[reply]; early {
			delete(t.early, reply)
			at = e.at
		}
		t.mu.Unlock()
	}
	t.note(id, func(h *hops) {
		switch kind {
		case claimWrite:
			setOnce(&h.claimSent, at)
		case createWrite:
			setOnce(&h.createSent, at)
		case assignWrite:
			setOnce(&h.assignSent, at)
		}
	})
	switch {
	case early:
		t.acked(pendingWrite{id, kind}, e.data, e.at)
	case reply != "":
		t.mu.Lock()
		t.pending[reply] = pendingWrite{id, kind}
		t.mu.Unlock()
	}
}

func (t *hopTap) note(id string, f func(*hops)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.byID[id]
	if h == nil {
		h = &hops{}
		t.byID[id] = h
	}
	f(h)
}

func (t *hopTap) get(id string) hops {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h := t.byID[id]; h != nil {
		return *h
	}
	return hops{}
}

func setOnce(t *time.Time, at time.Time) {
	if t.IsZero() {
		*t = at
	}
}
