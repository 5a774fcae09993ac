package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// metadata returns what --metadata-file records about a successful build,
// with buildx's key names where they exist. tags are the requested tags,
// used if the record does not carry its spec.
func metadata(b *kilnv1.Build, tags []string) map[string]any {
	r := b.GetResult()
	md := map[string]any{
		"kiln.build.id":                b.GetId(),
		"kiln.agent":                   b.GetAgent(),
		"kiln.cache.steps":             r.GetSteps(),
		"kiln.cache.cached":            r.GetCachedSteps(),
		"containerimage.config.digest": r.GetImageId(),
		// Without a push the image has no manifest digest; like buildx's
		// docker driver, report the image id then.
		"containerimage.digest": r.GetImageId(),
	}
	if r.GetBuilder() != kilnv1.Builder_BUILDER_UNSPECIFIED {
		md["kiln.builder"] = builderName(r.GetBuilder())
		// An agent that names its builder counts the context bytes it
		// sent the engine; from one that does not, 0 would mean unknown.
		md["kiln.context.transferBytes"] = r.GetContextTransferBytes()
	}
	if pushed := r.GetPushed(); len(pushed) > 0 {
		// Every tag of a build is pushed from the same manifest.
		md["containerimage.digest"] = pushed[0].GetDigest()
		list := make([]map[string]any, len(pushed))
		for i, p := range pushed {
			list[i] = map[string]any{"tag": p.GetTag(), "digest": p.GetDigest(), "size": p.GetSize()}
		}
		md["kiln.pushed"] = list
	}
	if d := r.GetDescriptor_(); d.GetDigest() != "" {
		// What was pushed: the manifest, or the image index of a
		// multi-platform build or of an image with attestations.
		md["containerimage.descriptor"] = map[string]any{"mediaType": d.GetMediaType(), "digest": d.GetDigest(), "size": d.GetSize()}
		md["containerimage.digest"] = d.GetDigest()
	}
	if b.GetId() != "" {
		// buildx names a build builder/node/ref; a farm's build is
		// kiln/<agent>/<build id> (the agent that ran its last attempt).
		md["buildx.build.ref"] = "kiln/" + b.GetAgent() + "/" + b.GetId()
	}
	if t := b.GetSpec().GetTags(); len(t) > 0 {
		tags = t
	}
	if len(tags) > 0 {
		md["image.name"] = strings.Join(tags, ",")
	}
	return md
}

// builderName is the --builder spelling of b.
func builderName(b kilnv1.Builder) string {
	switch b {
	case kilnv1.Builder_BUILDER_CLASSIC:
		return "classic"
	case kilnv1.Builder_BUILDER_BUILDKIT:
		return "buildkit"
	}
	return strings.ToLower(strings.TrimPrefix(b.String(), "BUILDER_"))
}

// writeMetadataFile writes metadata(b, tags) as indented JSON to path.
func writeMetadataFile(path string, b *kilnv1.Build, tags []string) error {
	data, err := json.MarshalIndent(metadata(b, tags), "", "  ")
	if err != nil {
		return fmt.Errorf("encoding build metadata: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing metadata file: %w", err)
	}
	return nil
}

// writeIIDFile writes the image id (config digest) to path, without a
// newline, as docker does.
func writeIIDFile(path string, b *kilnv1.Build) error {
	if err := os.WriteFile(path, []byte(b.GetResult().GetImageId()), 0o644); err != nil {
		return fmt.Errorf("writing image id file: %w", err)
	}
	return nil
}
