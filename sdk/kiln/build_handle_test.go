package kiln

import (
	"context"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// runBuild starts a build and waits for its end.
func runBuild(ctx context.Context, c *Client, req BuildRequest) (*kilnv1.Build, error) {
	b, err := c.Build(ctx, req)
	if err != nil {
		return nil, err
	}
	return b.Wait(ctx)
}

// watchAll follows build id from fromSequence to its end, calling onEvent
// (which may be nil) for each event, and returns what Wait returns.
func watchAll(ctx context.Context, c *Client, id string, fromSequence uint64, onEvent func(Event)) (*kilnv1.Build, error) {
	b, err := c.Watch(ctx, id, fromSequence)
	if err != nil {
		return nil, err
	}
	for ev := range b.Events() {
		if onEvent != nil {
			onEvent(ev)
		}
	}
	return b.Wait(ctx)
}

// listAll walks every page of the caller's builds.
func listAll(ctx context.Context, c *Client) error {
	for _, err := range c.List(ctx, ListFilter{}) {
		if err != nil {
			return err
		}
	}
	return nil
}
