// Package annotations is the rule for a build's OCI annotations
// (BuildSpec.annotations, buildx --annotation): the CLI parses them before
// it sends a build, the gateway checks them when it accepts one, the agent
// turns them into its engine's image exporter attributes and the index
// writer of a multi-platform build puts the index's own on the index.
//
// The syntax is buildx's, "[type[,type...][platform]:]key=value":
//
//	org.opencontainers.image.title=app              the image manifest's
//	manifest:org.opencontainers.image.title=app     the same
//	index:org.opencontainers.image.title=app        the image index's
//	manifest-descriptor:k=v, index-descriptor:k=v   the descriptors pointing at them
//	manifest[linux/arm64]:k=v                       one platform's manifest only
//	index,manifest:k=v                              both
package annotations

import (
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/platforms"
)

// Annotation types, as buildx and BuildKit's image exporter name them.
const (
	Manifest           = "manifest"
	ManifestDescriptor = "manifest-descriptor"
	Index              = "index"
	IndexDescriptor    = "index-descriptor"
)

// Feature is the engine feature (Agent.features) of engines whose image
// exporter writes annotations: standalone BuildKit. Docker's exporter
// writes none, so a build with annotations is routed away from it.
const Feature = "annotations"

// Limits.
const (
	// Max bounds a build's annotations.
	Max = 64
	// MaxKeyLen and MaxValueLen bound one annotation's key and value.
	MaxKeyLen   = 256
	MaxValueLen = 4096
)

// Annotation is one parsed --annotation for one type: a value naming
// several types gives one Annotation per type.
type Annotation struct {
	// Type is Manifest, ManifestDescriptor, Index or IndexDescriptor
	// (buildx's default, no type, is Manifest).
	Type string
	// Platform, normalised by proto/rules/platforms, restricts a Manifest
	// or ManifestDescriptor annotation to that platform's image ("":
	// every platform's).
	Platform string
	Key      string
	Value    string
}

// prefixRE is buildx's "type[,type...][platform]:" before the key.
var prefixRE = regexp.MustCompile(`^(?:([a-z-]+(?:,[a-z-]+)*)(?:\[([A-Za-z0-9_/-]+)\])?:)?(\S+)$`)

// Parse reads --annotation values as buildx does. Its errors match
// rules.ErrInvalid (bad syntax, unknown type, bad platform) or
// rules.ErrOverLimit and quote the value.
func Parse(values []string) ([]Annotation, error) {
	if len(values) > Max {
		return nil, rules.OverLimitf("%d annotations: at most %d", len(values), Max)
	}
	var out []Annotation
	for _, v := range values {
		as, err := parseOne(v)
		if err != nil {
			return nil, err
		}
		out = append(out, as...)
	}
	return out, nil
}

func parseOne(v string) ([]Annotation, error) {
	k, val, ok := strings.Cut(v, "=")
	if !ok {
		return nil, rules.Invalidf("annotation %q: want key=value, manifest:key=value, index:key=value, ...", v)
	}
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return nil, rules.Invalidf("annotation %q is not UTF-8 text", v)
	}
	if strings.HasPrefix(k, "[") {
		return nil, rules.Invalidf("annotation %q: name the type before the platform, as in manifest[linux/amd64]:key=value", v)
	}
	g := prefixRE.FindStringSubmatch(k)
	if g == nil {
		return nil, rules.Invalidf("annotation %q: want [type[platform]:]key=value, the key without spaces", v)
	}
	types, platform, key := g[1], g[2], g[3]
	if strings.HasSuffix(key, ":") {
		return nil, rules.Invalidf("annotation %q: the key is empty", v)
	}
	if len(key) > MaxKeyLen || len(val) > MaxValueLen {
		return nil, rules.OverLimitf("annotation %q: keys are at most %d bytes and values %d", abbrev(v), MaxKeyLen, MaxValueLen)
	}
	if platform != "" {
		p, err := platforms.Normalize(platform)
		if err != nil {
			return nil, rules.Invalidf("annotation %q: %v", v, err)
		}
		platform = p
	}
	if types == "" {
		types = Manifest
	}
	var out []Annotation
	for _, t := range strings.Split(types, ",") {
		switch t {
		case Manifest, ManifestDescriptor:
		case Index, IndexDescriptor:
			if platform != "" {
				return nil, rules.Invalidf("annotation %q: a platform applies to manifest and manifest-descriptor annotations only (an image index covers every platform)", v)
			}
		default:
			return nil, rules.Invalidf("annotation %q: unknown type %q (manifest, manifest-descriptor, index, index-descriptor)", v, t)
		}
		out = append(out, Annotation{Type: t, Platform: platform, Key: key, Value: val})
	}
	return out, nil
}

// CheckSpec is Parse plus what the build's shape allows: index and
// index-descriptor annotations need an image index, which a build makes
// for several platforms, or for one with attestations (BuildKit then
// pushes the image and its attestations as an index); a platform given
// must be one the build is for, when it names its platforms.
func CheckSpec(values, buildPlatforms []string, attestations bool) error {
	as, err := Parse(values)
	if err != nil {
		return err
	}
	for _, a := range as {
		if (a.Type == Index || a.Type == IndexDescriptor) && len(buildPlatforms) < 2 && !attestations {
			return rules.Invalidf("annotation %s:%s: the build pushes an image manifest, no image index; index annotations need several --platform values (or --provenance/--sbom); use manifest:%s", a.Type, a.Key, a.Key)
		}
		if a.Platform != "" && len(buildPlatforms) > 0 && !contains(buildPlatforms, a.Platform) {
			return rules.Invalidf("annotation %s[%s]:%s: the build is not for %s (it is for %s)", a.Type, a.Platform, a.Key, a.Platform, strings.Join(buildPlatforms, ", "))
		}
	}
	return nil
}

// ExporterAttrs are BuildKit image exporter attributes
// ("annotation-manifest.KEY", ...) for one image built for platform (the
// build's, or the engine's own): manifest and manifest-descriptor
// annotations for every platform or for this one; index and
// index-descriptor ones only with withIndex (the engine pushes an index:
// the image with its attestations). A multi-platform build's children
// leave the index's to the index writer (Index).
func ExporterAttrs(as []Annotation, platform string, withIndex bool) map[string]string {
	out := map[string]string{}
	for _, a := range as {
		switch a.Type {
		case Manifest, ManifestDescriptor:
			if a.Platform != "" && a.Platform != platform {
				continue
			}
		case Index, IndexDescriptor:
			if !withIndex {
				continue
			}
		}
		out["annotation-"+a.Type+"."+a.Key] = a.Value
	}
	return out
}

// ForIndex are what the writer of a multi-platform build's image index
// puts on it: the index's own annotations, and those of the descriptor in
// the index that points at platform's manifest.
func ForIndex(as []Annotation) (index map[string]string, descriptor func(platform string) map[string]string) {
	index = map[string]string{}
	for _, a := range as {
		if a.Type == Index {
			index[a.Key] = a.Value
		}
	}
	return index, func(platform string) map[string]string {
		out := map[string]string{}
		for _, a := range as {
			if a.Type == ManifestDescriptor && (a.Platform == "" || a.Platform == platform) {
				out[a.Key] = a.Value
			}
		}
		return out
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// abbrev shortens a long value for an error message.
func abbrev(s string) string {
	if len(s) <= 80 {
		return s
	}
	return strings.ToValidUTF8(s[:77], "") + "..."
}
