package buildstore

import (
	"context"
	"errors"
	"sort"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Query selects builds for Scan.
type Query struct {
	// Before keeps the builds whose id sorts before it (the last id of the
	// previous page); "" keeps all.
	Before string
	// Since keeps the builds created at or after it (zero: all).
	Since time.Time
	// Match keeps the builds it accepts (nil: all).
	Match func(*kilnv1.Build) bool
	// Limit stops the scan once it has this many builds (0: no limit).
	Limit int
}

// Scan returns the builds q selects, newest first. Ids sort by creation
// time, so Before and Since narrow the ids before any record is read, and
// the scan reads records only until it has Limit builds. Like List it
// refuses, with ErrUnavailable, a listing the bucket cannot vouch for.
func (s *Store) Scan(ctx context.Context, q Query) ([]*kilnv1.Build, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	floor := ""
	if !q.Since.IsZero() {
		floor = IDFloor(q.Since)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids)))
	var out []*kilnv1.Build
	for _, id := range ids {
		if q.Before != "" && id >= q.Before {
			continue
		}
		if id < floor {
			break // older still from here on
		}
		b, _, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !q.Since.IsZero() && b.GetCreatedAt().AsTime().Before(q.Since) {
			continue
		}
		if q.Match != nil && !q.Match(b) {
			continue
		}
		out = append(out, b)
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out, nil
}
