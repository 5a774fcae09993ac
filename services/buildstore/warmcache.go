package buildstore

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// SetWarmCacheRef records on a SUCCEEDED build the ref its automatic warm
// start exported its cache to after its result (BuildResult.warm_cache_ref):
// the one change a finished record takes. check, given the current record,
// may refuse (the caller's fence); its error is returned as is. A record
// that names ref already is returned unchanged.
func (s *Store) SetWarmCacheRef(ctx context.Context, id, ref string, check func(b *kilnv1.Build) error) (*kilnv1.Build, error) {
	for {
		b, rev, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := check(b); err != nil {
			return nil, err
		}
		if b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			return nil, fmt.Errorf("%w: build %s is %s: only a success keeps a warm cache ref", ErrBadTransition, id, b.State)
		}
		if b.GetResult().GetWarmCacheRef() == ref {
			return b, nil
		}
		if b.Result == nil {
			b.Result = &kilnv1.BuildResult{}
		}
		b.Result.WarmCacheRef = ref
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
