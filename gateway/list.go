package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"slices"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// ListBuilds pages through the caller's builds that match the request's
// filters, newest first. Only an admin may list another tenant's builds:
// for anyone else a request naming another tenant is PermissionDenied, as
// ListAgents and DrainAgent are, rather than quietly answered with the
// caller's own builds.
func (g *Gateway) ListBuilds(ctx context.Context, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	size := int(req.PageSize)
	switch {
	case size < 0:
		return nil, invalid("page_size %d is negative", size)
	case size == 0:
		size = 50
	case size > 1000:
		size = 1000
	}
	tenant := tenantOf(ctx)
	if req.Tenant != "" && req.Tenant != tenant {
		if err := requireAdmin(ctx, "listing another tenant's builds"); err != nil {
			return nil, err
		}
		tenant = req.Tenant
	}
	for _, st := range req.States {
		if _, ok := kilnv1.BuildState_name[int32(st)]; !ok || st == kilnv1.BuildState_BUILD_STATE_UNSPECIFIED {
			return nil, invalid("state %d is not a build state: ask for QUEUED, ASSIGNED, RUNNING, SUCCEEDED, FAILED or CANCELLED", st)
		}
	}
	if req.Since != nil {
		if err := req.Since.CheckValid(); err != nil {
			return nil, invalid("since is not a valid time: %v", err)
		}
	}
	filters := listFilters(tenant, req)
	q := buildstore.Query{Limit: size + 1, Match: func(b *kilnv1.Build) bool { return matches(b, tenant, req) }}
	if req.Since != nil {
		q.Since = req.Since.AsTime()
	}
	if req.PageToken != "" {
		before, ok := parsePageToken(req.PageToken, filters)
		if !ok {
			return nil, invalid("page_token is not one this farm issued for these filters: send the next_page_token of the previous page, with the same filters")
		}
		q.Before = before
	}
	builds, err := g.builds.Scan(ctx, q)
	if err != nil {
		return nil, err
	}
	resp := &kilnv1.ListBuildsResponse{}
	if len(builds) > size {
		builds = builds[:size]
		resp.NextPageToken = pageToken(builds[size-1].Id, filters)
	}
	for _, b := range builds {
		resp.Builds = append(resp.Builds, forClient(b))
	}
	return resp, nil
}

// matches reports whether b is one of tenant's builds that req's filters
// keep (since is the scan's).
func matches(b *kilnv1.Build, tenant string, req *kilnv1.ListBuildsRequest) bool {
	switch {
	case b.Tenant != tenant:
		return false
	case len(req.States) > 0 && !slices.Contains(req.States, b.State):
		return false
	case req.Repository != "" && b.GetSpec().GetRepository() != req.Repository:
		return false
	case req.Tag != "" && !slices.Contains(b.GetSpec().GetTags(), req.Tag):
		return false
	case req.Agent != "" && !ranOn(b, req.Agent):
		return false
	}
	return true
}

// ranOn reports whether b was assigned to agent at any attempt.
func ranOn(b *kilnv1.Build, agent string) bool {
	if b.Agent == agent || slices.Contains(b.LostAgents, agent) {
		return true
	}
	for _, a := range b.Attempts {
		if a.Agent == agent {
			return true
		}
	}
	return false
}

// listFilters identifies a listing's filters, which its page tokens are
// bound to: a token is refused with other filters.
func listFilters(tenant string, req *kilnv1.ListBuildsRequest) string {
	states := slices.Clone(req.States)
	slices.Sort(states)
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&kilnv1.ListBuildsRequest{
		Tenant: tenant, States: slices.Compact(states), Repository: req.Repository, Tag: req.Tag, Agent: req.Agent, Since: req.Since,
	})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// A page token is opaque to clients: a version byte, the last build id of
// the page, and a check of both bound to the filters, base64url-encoded.
// The check catches a token garbled or edited, or sent with other filters;
// a token forged in full could only start a page elsewhere among the
// caller's own builds.
const pageTokenVersion = "1"

func pageToken(lastID, filters string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenVersion + lastID + pageCheck(lastID, filters)))
}

func pageCheck(lastID, filters string) string {
	sum := sha256.Sum256([]byte(pageTokenVersion + "\x00" + lastID + "\x00" + filters))
	return hex.EncodeToString(sum[:8])
}

// parsePageToken returns the last build id of the page a token follows,
// if the token is well formed and was issued for filters.
func parsePageToken(token, filters string) (lastID string, ok bool) {
	data, err := base64.RawURLEncoding.DecodeString(token)
	s := string(data)
	const idLen, checkLen = 27, 16
	if err != nil || len(s) != len(pageTokenVersion)+idLen+checkLen || s[:len(pageTokenVersion)] != pageTokenVersion {
		return "", false
	}
	lastID, check := s[len(pageTokenVersion):len(pageTokenVersion)+idLen], s[len(pageTokenVersion)+idLen:]
	if !buildstore.ValidID(lastID) || check != pageCheck(lastID, filters) {
		return "", false
	}
	return lastID, true
}
