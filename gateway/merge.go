package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
)

// inflightKey identifies builds that would produce the same result: same
// tenant, same context and the same spec (tags included). ok is false for a
// build with secrets or registry credentials, which is never merged either
// way: its sealed values differ on every request even for the same
// secrets, and merging on ids alone would let one caller attach to a build
// made with another caller's secrets, and get its image (or its push).
func inflightKey(tenant string, spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef) (key string, ok bool) {
	if hasSealed(spec) {
		return "", false
	}
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&kilnv1.StartBuildRequest{Spec: spec, Context: ref})
	sum := sha256.Sum256(append([]byte(tenant+"\x00"), data...))
	return hex.EncodeToString(sum[:]), true
}

// joinInflight claims key for the new build id, or returns the identical
// build already in flight so the caller watches it instead of queuing a
// twin. release undoes the claim if the new build is not created.
func (g *Gateway) joinInflight(ctx context.Context, key, id string) (existing *kilnv1.Build, release func(), err error) {
	release = func() { _ = g.inflight.Delete(context.WithoutCancel(ctx), key) }
	for {
		// Claim first: a new build (the common case) costs one round trip.
		_, err := g.inflight.Create(ctx, key, []byte(id))
		if err == nil {
			return nil, release, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, nil, fmt.Errorf("claim in-flight key: %w", err)
		}
		e, err := g.inflight.Get(ctx, key)
		switch {
		case bus.IsNotFound(err):
			continue // released since: claim again
		case err != nil:
			return nil, nil, fmt.Errorf("read in-flight key: %w", err)
		}
		b, gerr := g.awaitRecord(ctx, string(e.Value()))
		if gerr == nil && !buildstore.Terminal(b.State) {
			return b, nil, nil
		}
		if gerr != nil && !errors.Is(gerr, buildstore.ErrNotFound) {
			return nil, nil, gerr
		}
		// The build it named is over: this request starts a new one.
		if _, err := g.inflight.Update(ctx, key, []byte(id), e.Revision()); err != nil {
			continue
		}
		return nil, release, nil
	}
}

// claimToCreate bounds how long a claimed key may name a record that does
// not exist yet: its claimant creates the record right after claiming.
const claimToCreate = 2 * time.Second

// awaitRecord reads the build a claim names, waiting up to claimToCreate
// for a twin request that claimed the key but has not created it yet.
func (g *Gateway) awaitRecord(ctx context.Context, id string) (*kilnv1.Build, error) {
	deadline := time.Now().Add(claimToCreate)
	for {
		b, _, err := g.builds.Get(ctx, id)
		if !errors.Is(err, buildstore.ErrNotFound) || time.Now().After(deadline) {
			return b, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
