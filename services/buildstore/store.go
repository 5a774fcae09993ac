// Package buildstore keeps build records in KV KILN_BUILDS, the farm's
// source of truth. Every change is a revision compare-and-swap, so two
// services racing on one build cannot both win, and only the transitions of
// the build life cycle are allowed:
//
//	QUEUED → ASSIGNED(agent, attempt) → RUNNING → SUCCEEDED | FAILED | CANCELLED
//
// with ASSIGNED/RUNNING → QUEUED when a lease lapses and QUEUED → CANCELLED
// or FAILED at any time.
package buildstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrNotFound: no build has that id.
	ErrNotFound = errors.New("build not found")
	// ErrFenced: the change came from an attempt the build has moved past.
	ErrFenced = errors.New("build attempt is stale")
	// ErrBadTransition: the life cycle does not allow the change.
	ErrBadTransition = errors.New("build state transition not allowed")
	// ErrUnavailable: the builds bucket cannot answer truthfully now (no
	// leader); try again.
	ErrUnavailable = errors.New("build records unavailable")
)

// Store reads and changes build records.
type Store struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
}

// Open binds to the KILN_BUILDS bucket (created by bus.Setup).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketBuilds, err)
	}
	return &Store{kv: kv, js: js}, nil
}

// Create stores a new record; it fails if the id exists.
func (s *Store) Create(ctx context.Context, b *kilnv1.Build) (revision uint64, err error) {
	data, err := proto.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("encode build %s: %w", b.Id, err)
	}
	rev, err := s.kv.Create(ctx, b.Id, data)
	if err != nil {
		return 0, fmt.Errorf("create build %s: %w", b.Id, err)
	}
	return rev, nil
}

// Get returns a record and its revision.
func (s *Store) Get(ctx context.Context, id string) (*kilnv1.Build, uint64, error) {
	if !ValidID(id) {
		return nil, 0, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	e, err := s.kv.Get(ctx, id)
	if err != nil {
		if bus.IsNotFound(err) {
			return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, 0, fmt.Errorf("read build %s: %w", id, err)
	}
	b := &kilnv1.Build{}
	if err := bus.Decode(e.Value(), b); err != nil {
		return nil, 0, fmt.Errorf("build %s: %w", id, err)
	}
	return b, e.Revision(), nil
}

// Update applies change to the current record and writes it back with a
// revision check, retrying on a concurrent write. change may return an error
// to abandon the update; that error is returned as is. The written record is
// returned. The new state must be a legal transition from the old one.
func (s *Store) Update(ctx context.Context, id string, change func(b *kilnv1.Build) error) (*kilnv1.Build, error) {
	return s.rewrite(ctx, id, func(b *kilnv1.Build) (bool, error) {
		from := b.State
		if err := change(b); err != nil {
			return false, err
		}
		if !Allowed(from, b.State) {
			return false, fmt.Errorf("%w: build %s from %s to %s", ErrBadTransition, id, from, b.State)
		}
		return true, nil
	})
}

// rewrite applies change to the current record and, when it says so,
// writes it back with a revision check, retrying the whole on a
// concurrent write. change's error abandons the update and is returned as
// is. The record as change left it is returned, written or not.
func (s *Store) rewrite(ctx context.Context, id string, change func(b *kilnv1.Build) (write bool, err error)) (*kilnv1.Build, error) {
	for {
		b, rev, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		write, err := change(b)
		if err != nil {
			return nil, err
		}
		if !write {
			return b, nil
		}
		data, err := proto.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encode build %s: %w", id, err)
		}
		if _, err := s.kv.Update(ctx, id, data, rev); err != nil {
			if bus.IsWrongRevision(err) {
				continue
			}
			return nil, fmt.Errorf("update build %s: %w", id, err)
		}
		return b, nil
	}
}

// List returns every record, newest first (ids sort by creation time).
func (s *Store) List(ctx context.Context) ([]*kilnv1.Build, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids)))
	out := make([]*kilnv1.Build, 0, len(ids))
	for _, id := range ids {
		b, _, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// kvSubjectPrefix prefixes the bucket's keys in its backing stream.
const kvSubjectPrefix = "$KV." + bus.BucketBuilds + "."

// ids lists the build ids from a snapshot of the bucket's stream subjects.
// KeyValue.ListKeys can miss a key that is updated while it lists (with
// history 1 its old revision vanishes and the new one arrives after the
// listing's end marker), and builds are updated all the time.
func (s *Store) ids(ctx context.Context) ([]string, error) {
	stream, err := s.js.Stream(ctx, "KV_"+bus.BucketBuilds)
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(kvSubjectPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	// While a replicated bucket has no leader (a NATS node lost, an
	// election), the answer can come from a server that knows the stream's
	// configuration but not its contents: an empty listing that is not
	// true. A scheduler recovering its queue from it lost every build
	// (TestChaos); refuse it, so the caller tries again.
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return nil, fmt.Errorf("list builds: bucket %s has no leader (NATS cluster electing): %w", bus.BucketBuilds, ErrUnavailable)
	}
	if info.State.Msgs > 0 && len(info.State.Subjects) == 0 {
		return nil, fmt.Errorf("list builds: bucket %s holds %d records but listed none: %w", bus.BucketBuilds, info.State.Msgs, ErrUnavailable)
	}
	ids := make([]string, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		if id, ok := strings.CutPrefix(subject, kvSubjectPrefix); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Terminal reports whether a build in state s is over.
func Terminal(s kilnv1.BuildState) bool {
	switch s {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED:
		return true
	}
	return false
}

// Allowed reports whether a record may move from one state to another.
// Staying in a state is allowed (lease renewals, cancel requests).
func Allowed(from, to kilnv1.BuildState) bool {
	if from == to {
		return !Terminal(from)
	}
	const (
		queued    = kilnv1.BuildState_BUILD_STATE_QUEUED
		assigned  = kilnv1.BuildState_BUILD_STATE_ASSIGNED
		running   = kilnv1.BuildState_BUILD_STATE_RUNNING
		succeeded = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		failed    = kilnv1.BuildState_BUILD_STATE_FAILED
		cancelled = kilnv1.BuildState_BUILD_STATE_CANCELLED
	)
	switch from {
	case queued:
		return to == assigned || to == failed || to == cancelled
	case assigned:
		return to == running || to == queued || to == failed || to == cancelled
	case running:
		return to == succeeded || to == failed || to == cancelled || to == queued
	}
	return false
}
