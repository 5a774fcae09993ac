package engine

import (
	"context"
	"fmt"

	"github.com/distribution/reference"
)

// inlineCacheArg is the build argument that has Docker's BuildKit write
// cache metadata into the image it builds (the docker CLI's
// --cache-to type=inline does the same).
const inlineCacheArg = "BUILDKIT_INLINE_CACHE"

// dockerCache maps a build's cache options onto what Docker's BuildKit
// takes: each registry import is an image ref of the build's cachefrom
// (Docker's BuildKit imports both inline cache from an image and a
// registry cache manifest from a ref), an inline export is the
// BUILDKIT_INLINE_CACHE build argument. A registry export is refused:
// Docker's BuildKit on the graph-driver store has no cache exporter.
func dockerCache(o BuildKitOptions) (from []string, inline bool, err error) {
	for _, c := range o.CacheFrom {
		if c.Type != "registry" || c.Attrs["ref"] == "" {
			return nil, false, &BuildError{Message: fmt.Sprintf("--cache-from type=%s: a Docker engine imports cache from a registry ref only (type=registry,ref=REF)", c.Type)}
		}
		from = append(from, c.Attrs["ref"])
	}
	for _, c := range o.CacheTo {
		switch c.Type {
		case "inline":
			inline = true
		case "registry":
			return nil, false, &BuildError{Message: "--cache-to type=registry needs an engine with the " + FeatureCacheExportRegistry +
				" feature (a standalone BuildKit engine, kiln-agent --engine buildkit://…); this agent's engine is Docker, whose BuildKit exports only inline cache (--cache-to type=inline)"}
		default:
			return nil, false, &BuildError{Message: fmt.Sprintf("--cache-to type=%s is not a cache type a Docker engine exports (inline)", c.Type)}
		}
	}
	return from, inline, nil
}

// withInlineCache returns the build arguments with inline cache turned
// on, leaving args unchanged.
func withInlineCache(args map[string]string) map[string]string {
	out := make(map[string]string, len(args)+1)
	for k, v := range args {
		out[k] = v
	}
	out[inlineCacheArg] = "1"
	return out
}

// ExportCache exports a finished build's cache for the automatic warm
// start. Docker's engine exports only inline cache: the image the build
// made (built with CacheTo type=inline, so its config carries the cache
// metadata) is tagged as to's ref and pushed, with the build's
// credentials for that registry, else this host's Docker config. The tag
// stays on the engine (Docker's BuildKit also finds inline cache in local
// images by that ref). A type=registry export is refused with a
// *BuildError: this engine has no cache exporter.
func (d *Docker) ExportCache(ctx context.Context, o BuildKitOptions, res Result, to CacheOption, r Reporter) error {
	if to.Type != "inline" {
		return &BuildError{Message: fmt.Sprintf("cache export type=%s needs an engine with the %s feature; a Docker engine exports inline cache only", to.Type, FeatureCacheExportRegistry)}
	}
	if res.ImageID == "" {
		return fmt.Errorf("cache export: the build made no image")
	}
	ref, err := reference.ParseNormalizedNamed(to.Attrs["ref"])
	if err != nil {
		return fmt.Errorf("cache export to %q: %w", to.Attrs["ref"], err)
	}
	ref = reference.TagNameOnly(ref)
	if err := d.c.ImageTag(ctx, res.ImageID, ref.String()); err != nil {
		return fmt.Errorf("cache export: tag %s as %s: %w", res.ImageID, ref, err)
	}
	var log func(string)
	if r != nil {
		log = func(line string) { r.Log(0, line) }
	}
	if _, _, err := d.Push(ctx, ref.String(), o.Auth, log); err != nil {
		return fmt.Errorf("cache export: %w", err)
	}
	return nil
}
