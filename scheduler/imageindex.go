package scheduler

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// writeIndex writes, under each of parent's tags, an image index
// referencing the manifest each child pushed for that tag, with the
// child's platform; the result names the index's digest for every tag.
// Every child pushed the same tags, so each tag pointed at one platform's
// image until the index replaced it. The index is a Docker manifest list
// when the children's manifests are Docker's (what a Docker engine
// pushes), an OCI index otherwise, as buildx chooses.
//
// The scheduler reads and writes the registry with its own credentials
// (its host's docker config; none for a registry that needs none): it
// cannot open the build's sealed registry auth, which only agents can.
func (s *Scheduler) writeIndex(ctx context.Context, parent *kilnv1.Build, kids []*kilnv1.Build) (*kilnv1.BuildResult, error) {
	res := &kilnv1.BuildResult{}
	for _, k := range kids {
		res.Steps += k.GetResult().GetSteps()
		res.CachedSteps += k.GetResult().GetCachedSteps()
		res.Builder = k.GetResult().GetBuilder()
		res.ContextTransferBytes += k.GetResult().GetContextTransferBytes()
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	for _, tag := range parent.GetSpec().GetTags() {
		ref, err := name.ParseReference(tag)
		if err != nil {
			return nil, fmt.Errorf("tag %q: %w", tag, err)
		}
		var idx v1.ImageIndex = empty.Index
		docker := true
		var adds []mutate.IndexAddendum
		for _, k := range kids {
			digest := pushedDigest(k, tag)
			if digest == "" {
				return nil, fmt.Errorf("platform %s (build %s) did not push %s", platformOf(k), k.Id, tag)
			}
			d, err := remote.Get(ref.Context().Digest(digest), opts...)
			if err != nil {
				return nil, fmt.Errorf("platform %s's manifest %s: %w", platformOf(k), digest, err)
			}
			img, err := d.Image()
			if err != nil {
				return nil, fmt.Errorf("platform %s's manifest %s: %w", platformOf(k), digest, err)
			}
			desc := d.Descriptor
			desc.Platform = ociPlatform(platformOf(k))
			desc.ArtifactType = "" // an image's manifest, not an artifact
			docker = docker && desc.MediaType == types.DockerManifestSchema2
			adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: desc})
		}
		mt := types.OCIImageIndex
		if docker {
			mt = types.DockerManifestList
		}
		idx = mutate.IndexMediaType(mutate.AppendManifests(idx, adds...), mt)
		if err := remote.WriteIndex(ref, idx, opts...); err != nil {
			return nil, fmt.Errorf("write the index as %s: %w", tag, err)
		}
		digest, err := idx.Digest()
		if err != nil {
			return nil, err
		}
		size, err := idx.Size()
		if err != nil {
			return nil, err
		}
		res.Pushed = append(res.Pushed, &kilnv1.PushedImage{Tag: tag, Digest: digest.String(), Size: size})
		if res.ImageId == "" {
			res.ImageId = digest.String() // buildx's containerimage.digest: the index's
		}
	}
	return res, nil
}

// pushedDigest is the digest of the manifest k pushed as tag ("" if none).
func pushedDigest(k *kilnv1.Build, tag string) string {
	for _, p := range k.GetResult().GetPushed() {
		if p.GetTag() == tag {
			return p.GetDigest()
		}
	}
	return ""
}

// ociPlatform is "os/arch[/variant]" as an index descriptor's platform.
func ociPlatform(p string) *v1.Platform {
	parts := strings.SplitN(p, "/", 3)
	out := &v1.Platform{OS: parts[0]}
	if len(parts) > 1 {
		out.Architecture = parts[1]
	}
	if len(parts) > 2 {
		out.Variant = parts[2]
	}
	return out
}
