package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// A write that failed because the NATS cluster had no quorum may still be
// applied: the stream's leader appended it to its log before it noticed
// that it had lost its followers, and when they return that log wins the
// election and the write commits. A StartBuild that answered Unavailable
// must not leave such a build to run later (no client knows its id).
//
// With an idempotency key the client's retry settles it: the key names the
// build if its record was written after all, and is taken over if not
// (claimIdempotencyKey). Without one, the gateway abandons the build:
// once the cluster is back, runAbandoned makes sure its record does not
// exist — a delete marker written only if the key is empty, which no
// earlier, uncommitted write can follow — or deletes it while it is still
// QUEUED, or asks for it to be cancelled if a scheduler took it already.
// The ids wait in memory: a gateway that stops before the cluster returns
// forgets them (deploy/nats/README.md "Replication").

// abandoned holds the build ids StartBuild gave up on.
type abandoned struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	wake chan struct{}
}

func newAbandoned() abandoned {
	return abandoned{ids: map[string]struct{}{}, wake: make(chan struct{}, 1)}
}

// abandonUnknown abandons build id if StartBuild (or RetryBuild) failed with err, the
// cluster unavailable, for a request without an idempotency key: whether
// its record was written is not known.
func (g *Gateway) abandonUnknown(ctx context.Context, idempotencyKey, id string, err error) {
	if idempotencyKey == "" && natsUnavailable(ctx, err) {
		g.abandonStart(id)
	}
}

// abandonStart queues id for runAbandoned.
func (g *Gateway) abandonStart(id string) {
	a := &g.abandoned
	a.mu.Lock()
	a.ids[id] = struct{}{}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	g.log.Warn("a build start failed with the NATS cluster unavailable: its record, if written after all, will be removed once the cluster is back", "build_id", id)
}

// pending returns the ids not settled yet.
func (a *abandoned) pending() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.ids))
	for id := range a.ids {
		ids = append(ids, id)
	}
	return ids
}

func (a *abandoned) done(id string) {
	a.mu.Lock()
	delete(a.ids, id)
	a.mu.Unlock()
}

// abandonRetry is how often runAbandoned tries again while the cluster is
// unavailable.
const abandonRetry = time.Second

// runAbandoned settles abandoned builds until ctx ends.
func (g *Gateway) runAbandoned(ctx context.Context) {
	tick := time.NewTicker(abandonRetry)
	defer tick.Stop()
	for {
		for _, id := range g.abandoned.pending() {
			if err := g.settleAbandoned(ctx, id); err != nil {
				g.log.Debug("abandoned build not settled yet", "build_id", id, "err", err)
				continue
			}
			g.abandoned.done(id)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-g.abandoned.wake:
		}
	}
}

// settleAbandoned makes sure the build id will not run.
func (g *Gateway) settleAbandoned(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A delete marker, only if the key has never been written.
	marker := nats.NewMsg("$KV." + bus.BucketBuilds + "." + id)
	marker.Header.Set("KV-Operation", "DEL")
	marker.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	_, err := g.conn.JS.PublishMsg(ctx, marker)
	if err == nil {
		g.log.Info("abandoned build was never stored", "build_id", id)
		return nil
	}
	if !bus.IsWrongRevision(err) {
		return err
	}
	// The record was written after all. Read it from the stream's leader:
	// a direct get may be answered by a follower that has not applied it.
	rec, rev, err := g.leaderRecord(ctx, id)
	if err != nil || rec == nil {
		return err // nil: deleted since
	}
	kv, err := g.conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		return err
	}
	switch {
	case buildstore.Terminal(rec.State):
		return nil
	case rec.State == kilnv1.BuildState_BUILD_STATE_QUEUED:
		// No client knows the id and no scheduler has taken it: remove
		// it; a scheduler that reads it from an intake message finds no
		// record.
		if err := kv.Delete(ctx, id, jetstream.LastRevision(rev)); err != nil {
			return err // changed since (a scheduler took it): the next try cancels it
		}
		g.log.Info("abandoned build was stored after all: removed", "build_id", id)
		return nil
	default:
		rec.CancelRequested = true
		data, err := proto.Marshal(rec)
		if err != nil {
			return err
		}
		if _, err := kv.Update(ctx, id, data, rev); err != nil {
			return err
		}
		if err := g.conn.NC.Publish(bus.CancelSubject(id), nil); err != nil {
			return err
		}
		g.log.Info("abandoned build was stored after all and taken by a scheduler: cancel requested", "build_id", id)
		return nil
	}
}

// leaderRecord reads build id's record, and its revision, from the leader
// of the bucket's stream ($JS.API.STREAM.MSG.GET); nil if it was deleted.
func (g *Gateway) leaderRecord(ctx context.Context, id string) (*kilnv1.Build, uint64, error) {
	stream := "KV_" + bus.BucketBuilds
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + bus.BucketBuilds + "." + id})
	msg, err := g.conn.NC.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, 0, fmt.Errorf("read build %s from the leader: %w", id, err)
	}
	var resp struct {
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs"`
			Data   []byte `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, 0, fmt.Errorf("read build %s from the leader: %w", id, err)
	}
	if resp.Error != nil {
		return nil, 0, fmt.Errorf("read build %s from the leader: %w", id, resp.Error)
	}
	if resp.Message == nil {
		return nil, 0, fmt.Errorf("read build %s from the leader: empty answer", id)
	}
	if bytes.Contains(resp.Message.Header, []byte("KV-Operation")) {
		return nil, 0, nil // a delete or purge marker
	}
	b := &kilnv1.Build{}
	if err := bus.Decode(resp.Message.Data, b); err != nil {
		return nil, 0, fmt.Errorf("build %s: %w", id, err)
	}
	return b, resp.Message.Seq, nil
}
