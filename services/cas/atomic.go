package cas

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// With JetStream's sync_interval always (kilnd's, and what DESIGN.md asks
// of a production farm) every message a stream stores is one fsync: 5 000
// one-line files, a chunk and an ObjectInfo each, cost 10 000 of them.
// JetStream's atomic batch publish (nats-server 2.12 or later, a stream
// with allow_atomic) stages a batch's messages and commits them together,
// all or none, with one sync for the whole batch on a single server and
// one raft proposal in a cluster: the packs of REAPI's BatchUpdateBlobs
// and of Bazel's remote caches, without a second layout that every reader
// (the object store's own Get, the collector's List, getSmall, GetMany)
// would have to learn — each blob is still its own object, verified on
// every read. Where batches are refused (an older server, a stream set
// up without them, too many in flight) the messages go pipelined, one
// acknowledged write each, as before.

// atomicBatchMsgs is the most messages one atomic batch carries: the
// server's default limit (max_batch_size, 1 000).
const atomicBatchMsgs = 1000

// atomicRecheck is how long a Store that found atomic batches unavailable
// writes pipelined before it looks again.
const atomicRecheck = time.Minute

// Error codes of JetStream answers that send a batch down the pipelined
// path instead: the stream does not allow atomic batches (10174), a
// staged message was lost (10176), the batch is over the server's
// max_batch_size (10199), or too many batches are in flight (10210).
const (
	errCodeAtomicDisabled    = 10174
	errCodeAtomicIncomplete  = 10176
	errCodeAtomicTooLarge    = 10199
	errCodeAtomicTooInflight = 10210
)

// atomicState remembers whether KILN_CAS takes atomic batches.
type atomicState struct {
	mu      sync.Mutex
	on      bool
	checked time.Time
}

// atomicOn reports whether PutBatch may write atomic batches, allowing
// them on KILN_CAS when the stream does not yet (bus.Setup's object-store
// config leaves them off; a gateway may update the stream).
func (s *Store) atomicOn(ctx context.Context) bool {
	a := &s.atomic
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.on || s.stream == nil {
		return a.on
	}
	if !a.checked.IsZero() && s.now().Sub(a.checked) < atomicRecheck {
		return false
	}
	a.checked = s.now()
	info, err := s.stream.Info(ctx)
	if err != nil {
		return false
	}
	cfg := info.Config
	if !cfg.AllowAtomicPublish {
		cfg.AllowAtomicPublish = true
		st, err := s.js.UpdateStream(ctx, cfg)
		if err != nil {
			return false
		}
		cfg = st.CachedInfo().Config
	}
	a.on = cfg.AllowAtomicPublish
	return a.on
}

// atomicOff makes the next PutBatch look again whether the stream takes
// atomic batches (after one was refused as disabled: bus.Setup ran again).
func (s *Store) atomicOff(recheckNow bool) {
	s.atomic.mu.Lock()
	defer s.atomic.mu.Unlock()
	s.atomic.on = false
	if recheckNow {
		s.atomic.checked = time.Time{}
	} else {
		s.atomic.checked = s.now()
	}
}

// writeBlobs stores each blob's messages (blobMsgs), as atomic batches
// when the stream takes them, else pipelined.
func (s *Store) writeBlobs(ctx context.Context, blobs [][]*nats.Msg) error {
	if s.atomicOn(ctx) {
		err := s.writeAtomic(ctx, blobs)
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			return err
		}
		switch apiErr.ErrorCode {
		case errCodeAtomicDisabled:
			s.atomicOff(true)
		case errCodeAtomicTooLarge:
			s.atomicOff(false)
		case errCodeAtomicTooInflight, errCodeAtomicIncomplete:
		default:
			return err
		}
	}
	return s.writePipelined(ctx, blobs)
}

// writeAtomic writes blobs in atomic batches of up to atomicBatchMsgs
// messages, never splitting a blob's messages.
func (s *Store) writeAtomic(ctx context.Context, blobs [][]*nats.Msg) error {
	var batch []*nats.Msg
	for i, ms := range blobs {
		if len(batch)+len(ms) > atomicBatchMsgs {
			if err := s.commitAtomic(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
		batch = append(batch, ms...)
		if i == len(blobs)-1 {
			return s.commitAtomic(ctx, batch)
		}
	}
	return nil
}

// commitAtomic publishes msgs as one atomic batch: every message but the
// last without an acknowledgement (the server stages them), the last
// with the commit header, whose answer says whether all were stored.
func (s *Store) commitAtomic(ctx context.Context, msgs []*nats.Msg) error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	batchID := hex.EncodeToString(id[:])
	nc := s.js.Conn()
	for i, m := range msgs {
		out := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: nats.Header{}}
		for k, v := range m.Header {
			out.Header[k] = v
		}
		out.Header.Set("Nats-Batch-Id", batchID)
		out.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(out); err != nil {
				return err
			}
			continue
		}
		out.Header.Set("Nats-Batch-Commit", "1")
		reply, err := nc.RequestMsgWithContext(ctx, out)
		if err != nil {
			return err
		}
		var ack struct {
			Error *jetstream.APIError `json:"error,omitempty"`
			Count int                 `json:"count"`
		}
		if err := json.Unmarshal(reply.Data, &ack); err != nil {
			return fmt.Errorf("atomic batch of %d messages: unreadable answer %q: %w", len(msgs), reply.Data, err)
		}
		if ack.Error != nil {
			return ack.Error
		}
		if ack.Count != len(msgs) {
			return fmt.Errorf("atomic batch of %d messages: the server committed %d", len(msgs), ack.Count)
		}
	}
	return nil
}

// writePipelined publishes every message with an acknowledgement each,
// pipelined, and waits for all.
func (s *Store) writePipelined(ctx context.Context, blobs [][]*nats.Msg) error {
	var futures []jetstream.PubAckFuture
	for _, ms := range blobs {
		for _, m := range ms {
			f, err := s.js.PublishMsgAsync(m)
			if err != nil {
				return err
			}
			futures = append(futures, f)
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
