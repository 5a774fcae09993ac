package kiln

import (
	"context"
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Children follows the children of a multi-platform build — one build per
// platform, in the order of its spec's platforms — as Client.Watch
// follows a build: each from its first event, under the context b is
// followed under, and replaying their logs so far only when b was watched
// with SoFar. It returns none for a build of one platform, and none yet
// for a multi-platform build the farm has not split into its children
// (its record names none): call it again on one of b's later events.
func (b *Build) Children(ctx context.Context) ([]*Build, error) {
	if len(b.Record().GetSpec().GetPlatforms()) < 2 {
		return nil, nil
	}
	var ids []string
	err := b.c.retry.retry(ctx, func() error {
		rec, err := b.c.Get(ctx, b.id)
		ids = rec.GetChildren()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("children of build %s: %w", b.id, err)
	}
	kids := make([]*Build, 0, len(ids))
	for _, id := range ids {
		var rec *kilnv1.Build
		err := b.c.retry.retry(ctx, func() error {
			var err error
			rec, err = b.c.Get(ctx, id)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("child %s of build %s: %w", id, b.id, err)
		}
		kids = append(kids, b.c.follow(b.ctx, rec, 0, b.soFar))
	}
	return kids, nil
}
