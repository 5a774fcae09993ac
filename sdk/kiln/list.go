package kiln

import (
	"context"
	"fmt"
	"iter"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ListFilter says which builds Client.List returns; its zero value: all
// of the caller's builds. The farm filters, so only matching builds travel.
type ListFilter struct {
	// States keeps builds in any of these states (none: every state).
	States []kilnv1.BuildState
	// Repository keeps builds whose spec names this repository
	// (BuildSpec.repository).
	Repository string
	// Tag keeps builds with this tag, the full reference as given at start
	// ("registry.example/team/app:1").
	Tag string
	// Agent keeps builds that were assigned to this agent at any attempt.
	Agent string
	// Since keeps builds created at or after it (zero: no bound).
	Since time.Time
	// Tenant keeps another tenant's builds; only an admin may ask. Others
	// always list their own.
	Tenant string
	// PageSize is how many builds each ListBuilds call fetches (0: the
	// farm's default of 50; at most 1000).
	PageSize int32
}

// List returns the builds f keeps, newest first, fetching a page at a
// time as the loop goes on: breaking out of the loop fetches no more. An
// error ends the sequence: the loop sees it with a nil build.
//
//	running := []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_RUNNING}
//	for b, err := range client.List(ctx, kiln.ListFilter{States: running}) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(b.GetId())
//	}
func (c *Client) List(ctx context.Context, f ListFilter) iter.Seq2[*kilnv1.Build, error] {
	return func(yield func(*kilnv1.Build, error) bool) {
		token := ""
		for {
			resp, err := c.builds.ListBuilds(ctx, f.request(token))
			if err != nil {
				yield(nil, fmt.Errorf("listing builds: %w", err))
				return
			}
			for _, b := range resp.GetBuilds() {
				if !yield(b, nil) {
					return
				}
			}
			token = resp.GetNextPageToken()
			if token == "" {
				return
			}
		}
	}
}

// request is the ListBuilds request for the page after token.
func (f ListFilter) request(token string) *kilnv1.ListBuildsRequest {
	r := &kilnv1.ListBuildsRequest{
		PageSize: f.PageSize, PageToken: token,
		States: f.States, Repository: f.Repository, Tag: f.Tag, Agent: f.Agent, Tenant: f.Tenant,
	}
	if !f.Since.IsZero() {
		r.Since = timestamppb.New(f.Since)
	}
	return r
}
