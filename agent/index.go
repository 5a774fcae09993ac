package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/annotations"
	"github.com/kilnbuild/kiln/proto/rules/registryhost"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// A multi-platform build's image index. When every child of a
// multi-platform build has pushed, the scheduler queues the parent with
// its children's results (Build.child_results), and the agent that takes
// it writes, under each of the parent's tags, an image index referencing
// the manifest each child pushed as that tag, with the child's platform,
// instead of building. It reads and writes the registry with the build's
// own sealed registry credentials (over this host's docker config), as
// the children pushed: the scheduler holds no tenant's credentials.
//
// The index is a Docker manifest list when every child's manifest is
// Docker's (what a Docker engine pushes) and nothing in it is annotated,
// an OCI index otherwise, as buildx chooses. Its annotations and those of
// its descriptors are the build's index and manifest-descriptor ones
// (proto/rules/annotations). A child that pushed an index (its image and its
// attestations, on standalone BuildKit) has its manifests listed in the
// parent's index, as buildx lists a multi-platform build's attestations.

// isIndexBuild reports whether b is a multi-platform build queued for its
// image index.
func isIndexBuild(b *kilnv1.Build) bool {
	return len(b.GetChildren()) > 0 && len(b.GetChildResults()) > 0
}

// writeIndex writes b's image index under each of its tags and returns the
// parent's result: each tag pushed with the index's digest, the index's
// descriptor, and the children's steps added up. Every push is fenced on
// the attempt's lease, as a build's are.
func (a *Agent) writeIndex(ctx context.Context, b *kilnv1.Build, ev *events) (*kilnv1.BuildResult, error) {
	res := &kilnv1.BuildResult{}
	for _, c := range b.GetChildResults() {
		r := c.GetResult()
		res.Steps += r.GetSteps()
		res.CachedSteps += r.GetCachedSteps()
		res.ContextTransferBytes += r.GetContextTransferBytes()
		res.Builder = r.GetBuilder()
	}
	if !b.GetSpec().GetPush() {
		// Built for its files (--output type=local|tar): each child
		// exported its platform's, and there is no image to index.
		ev.log(0, "no --push: each platform exported its files; no image index to write")
		return res, nil
	}
	creds, err := a.openRegistryAuth(b)
	if err != nil {
		return res, &engine.BuildError{Message: err.Error()}
	}
	mask := newMasker(maskedValues(nil, creds))
	as, err := annotations.Parse(b.GetSpec().GetAnnotations())
	if err != nil { // the gateway checked them: a record changed since
		return res, &engine.BuildError{Message: err.Error()}
	}
	indexAnn, descAnn := annotations.ForIndex(as)
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.NewMultiKeychain(credsKeychain(creds), authn.DefaultKeychain))}
	platforms := make([]string, len(b.GetChildResults()))
	for i, c := range b.GetChildResults() {
		platforms[i] = c.GetPlatform()
	}
	for _, tag := range b.GetSpec().GetTags() {
		ev.log(0, fmt.Sprintf("writing the image index of %s as %s", strings.Join(platforms, ", "), tag))
		raw, mt, err := indexFor(ctx, tag, b.GetChildResults(), indexAnn, descAnn, opts)
		if err != nil {
			return res, mask.err(&engine.BuildError{Message: "every platform built, but the image index could not be written: " + err.Error()})
		}
		// Fence the push: an attempt that lost its build must not
		// overwrite the tag the attempt that replaced it wrote.
		if _, err := ev.at.Renew(ctx, a.cfg.Lease); err != nil {
			return res, fmt.Errorf("push %s: %w", tag, err)
		}
		ref, _ := name.ParseReference(tag) // indexFor parsed it
		pctx, pspan := startSpan(ctx, "push index "+tag, b, telemetry.TagKey.String(tag))
		err = remote.Put(ref, rawIndex{raw: raw, mt: mt}, append(opts, remote.WithContext(pctx))...)
		endSpan(pspan, err)
		if err != nil {
			return res, mask.err(&engine.BuildError{Message: fmt.Sprintf("every platform built, but the image index could not be pushed as %s: %v", tag, err)})
		}
		digest, size, _ := v1.SHA256(bytes.NewReader(raw))
		p := &kilnv1.PushedImage{Tag: tag, Digest: digest.String(), Size: size}
		res.Pushed = append(res.Pushed, p)
		ev.publish(&kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Pushed{Pushed: p}})
		if res.ImageId == "" {
			res.ImageId = digest.String() // buildx's containerimage.digest: the index's
			res.Descriptor_ = &kilnv1.ImageDescriptor{MediaType: string(mt), Digest: digest.String(), Size: size}
		}
	}
	return res, nil
}

// indexFor is the image index tag gets: the manifest each child pushed as
// tag, read from the registry for its media type and size, with the
// child's platform and descriptor annotations (descAnn), and the index's
// own annotations (indexAnn).
func indexFor(ctx context.Context, tag string, kids []*kilnv1.ChildResult, indexAnn map[string]string, descAnn func(string) map[string]string, opts []remote.Option) ([]byte, types.MediaType, error) {
	ref, err := name.ParseReference(tag)
	if err != nil {
		return nil, "", fmt.Errorf("tag %q: %w", tag, err)
	}
	idx := v1.IndexManifest{SchemaVersion: 2}
	docker := true
	for _, k := range kids {
		digest := pushedDigest(k.GetResult(), tag)
		if digest == "" {
			return nil, "", fmt.Errorf("platform %s (build %s) did not push %s", k.GetPlatform(), k.GetBuildId(), tag)
		}
		d, err := remote.Head(ref.Context().Digest(digest), opts...)
		if err != nil {
			return nil, "", fmt.Errorf("platform %s's manifest %s: %w", k.GetPlatform(), digest, err)
		}
		descs := []v1.Descriptor{*d}
		if d.MediaType.IsImage() {
			if err := checkPushed(ref.Context().Digest(digest), k, opts); err != nil {
				return nil, "", err
			}
		}
		if d.MediaType.IsIndex() { // its image and its attestations
			child, err := remote.Index(ref.Context().Digest(digest), opts...)
			if err != nil {
				return nil, "", fmt.Errorf("platform %s's index %s: %w", k.GetPlatform(), digest, err)
			}
			m, err := child.IndexManifest()
			if err != nil {
				return nil, "", fmt.Errorf("platform %s's index %s: %w", k.GetPlatform(), digest, err)
			}
			descs = m.Manifests
		}
		for _, desc := range descs {
			attestation := desc.Annotations["vnd.docker.reference.type"] != ""
			if !attestation {
				desc.Platform = ociPlatform(k.GetPlatform())
				for key, v := range descAnn(k.GetPlatform()) {
					if desc.Annotations == nil {
						desc.Annotations = map[string]string{}
					}
					desc.Annotations[key] = v
				}
			}
			desc.ArtifactType = "" // an image's manifest, not an artifact
			docker = docker && desc.MediaType == types.DockerManifestSchema2
			idx.Manifests = append(idx.Manifests, desc)
		}
	}
	idx.MediaType = types.OCIImageIndex
	if docker && len(indexAnn) == 0 && !annotated(idx.Manifests) {
		idx.MediaType = types.DockerManifestList
	}
	if len(indexAnn) > 0 {
		idx.Annotations = indexAnn
	}
	raw, err := json.Marshal(idx)
	return raw, idx.MediaType, err
}

// checkPushed checks that the manifest child k pushed is for k's
// platform, as its image config says. Builds of the same tag on one
// Docker engine (two children of a build on two agents, or two slots,
// sharing it) tag the engine's image in turn, and a push sends whichever
// image the tag names by then: an index listing another platform's image
// as this one's must not be written.
func checkPushed(ref name.Digest, k *kilnv1.ChildResult, opts []remote.Option) error {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return fmt.Errorf("platform %s's manifest %s: %w", k.GetPlatform(), ref.DigestStr(), err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("platform %s's image config: %w", k.GetPlatform(), err)
	}
	if cfg.Architecture == "" {
		return nil // says nothing of its platform
	}
	got := cfg.OS + "/" + cfg.Architecture
	if cfg.Variant != "" {
		got += "/" + cfg.Variant
	}
	if !samePlatform(got, k.GetPlatform()) {
		return fmt.Errorf("platform %s (build %s) pushed %s, an image for %s: another build of the same tag on the same Docker engine re-tagged the engine's image before the push; build again, or give each agent its own engine", k.GetPlatform(), k.GetBuildId(), ref.DigestStr(), got)
	}
	return nil
}

// samePlatform reports whether an image config's platform is want, an
// arm64 image with variant v8 being linux/arm64's.
func samePlatform(got, want string) bool {
	return got == want || got == want+"/v8" || strings.TrimSuffix(got, "/v8") == want
}

// annotated reports whether any of descs has annotations, which a Docker
// manifest list has no place for.
func annotated(descs []v1.Descriptor) bool {
	for _, d := range descs {
		if len(d.Annotations) > 0 {
			return true
		}
	}
	return false
}

// rawIndex is an index manifest as remote.Put sends it.
type rawIndex struct {
	raw []byte
	mt  types.MediaType
}

func (r rawIndex) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawIndex) MediaType() (types.MediaType, error) { return r.mt, nil }

// pushedDigest is the digest of the manifest a child pushed as tag ("" if
// none).
func pushedDigest(r *kilnv1.BuildResult, tag string) string {
	for _, p := range r.GetPushed() {
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

// credsKeychain serves a build's registry credentials to
// go-containerregistry, by registry host as they are keyed.
type credsKeychain engine.Credentials

func (k credsKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	ac, ok := k[registryhost.Normalize(r.RegistryStr())]
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: ac.Username, Password: ac.Password,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
	}), nil
}
