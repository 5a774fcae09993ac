package buildstore

import (
	"context"
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// SetWarmCacheRef records on a SUCCEEDED build the ref its automatic warm
// start exported its cache to after its result (BuildResult.warm_cache_ref):
// the one change a finished record takes. check, given the current record,
// may refuse (the caller's fence); its error is returned as is. A record
// that names ref already is returned unchanged.
func (s *Store) SetWarmCacheRef(ctx context.Context, id, ref string, check func(b *kilnv1.Build) error) (*kilnv1.Build, error) {
	return s.rewrite(ctx, id, func(b *kilnv1.Build) (bool, error) {
		if err := check(b); err != nil {
			return false, err
		}
		if b.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			return false, fmt.Errorf("%w: build %s is %s: only a success keeps a warm cache ref", ErrBadTransition, id, b.State)
		}
		if b.GetResult().GetWarmCacheRef() == ref {
			return false, nil
		}
		if b.Result == nil {
			b.Result = &kilnv1.BuildResult{}
		}
		b.Result.WarmCacheRef = ref
		return true, nil
	})
}
