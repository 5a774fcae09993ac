// Package cacheopt holds the rules for a build's cache options, which the
// CLI, the gateway and the agent all apply: buildx's --cache-from and
// --cache-to syntax, which cache types a farm accepts, the registry hosts
// whose credentials a build's caches need, and the ref under which the
// farm's automatic warm start keeps one lineage's cache.
//
// The syntax is buildx's: comma-separated key=value pairs (CSV quoting, so
// a value may hold a comma), "type" naming the cache type; a value without
// any "=" is a registry ref ("--cache-from user/app:cache" means
// type=registry,ref=user/app:cache).
package cacheopt

import (
	"encoding/csv"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/registryhost"
)

// Cache types kiln accepts.
const (
	TypeRegistry = "registry"
	TypeInline   = "inline"
)

// Registry cache export modes.
const (
	ModeMin = "min"
	ModeMax = "max"
)

// Limits.
const (
	// MaxOptions bounds the entries of cache_from and of cache_to.
	MaxOptions = 8
	// MaxRefLen bounds a cache ref.
	MaxRefLen = 255
)

// registryAttrs are the attributes a type=registry cache may carry, as
// buildx documents them; any other is refused rather than ignored.
var registryAttrs = map[string]bool{
	"ref": true, "mode": true, "ignore-error": true, "oci-mediatypes": true,
	"image-manifest": true, "compression": true, "compression-level": true, "force-compression": true,
}

// elsewhere are types buildx knows that need something a farm's agents
// do not have; they are refused with the reason.
var elsewhere = map[string]string{
	"local":  "type=local reads and writes a directory on the machine that builds, which on a farm is an agent the client cannot see; use type=registry",
	"gha":    "type=gha needs the GitHub Actions cache service's token and URL inside the build, which the farm's agents do not have; use type=registry",
	"s3":     "type=s3 is not supported by kiln's agents; use type=registry",
	"azblob": "type=azblob is not supported by kiln's agents; use type=registry",
}

// Parse parses one --cache-from or --cache-to value in buildx's syntax.
// It checks the syntax only; Validate checks the option for its use.
func Parse(s string) (*kilnv1.CacheOption, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, rules.Invalidf("cache option is empty: want type=registry,ref=REF (or a bare REF)")
	}
	if !strings.Contains(s, "=") {
		return &kilnv1.CacheOption{Type: TypeRegistry, Attrs: map[string]string{"ref": s}}, nil
	}
	r := csv.NewReader(strings.NewReader(s))
	fields, err := r.Read()
	if err != nil {
		return nil, rules.Invalidf("cache option %.80q is not comma-separated key=value pairs: %v", s, err)
	}
	o := &kilnv1.CacheOption{Attrs: map[string]string{}}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			return nil, rules.Invalidf("cache option %.80q: %.40q is not key=value", s, f)
		}
		if k == "type" {
			o.Type = strings.ToLower(strings.TrimSpace(v))
			continue
		}
		if _, dup := o.Attrs[k]; dup {
			return nil, rules.Invalidf("cache option %.80q names %s twice", s, k)
		}
		o.Attrs[k] = v
	}
	if o.Type == "" {
		if _, hasRef := o.Attrs["ref"]; !hasRef {
			return nil, rules.Invalidf("cache option %.80q has no type= (registry or inline)", s)
		}
		o.Type = TypeRegistry
	}
	return o, nil
}

// Use says what a cache option is for.
type Use int

const (
	From Use = iota // --cache-from: import
	To              // --cache-to: export
)

func (u Use) flag() string {
	if u == From {
		return "--cache-from"
	}
	return "--cache-to"
}

// refRE is a loose image reference: name components, an optional tag,
// no digest (a cache is written and read by tag).
var refRE = regexp.MustCompile(`^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$`)

// Validate checks an option for its use: a type kiln accepts there, the
// attributes that type takes, a ref where one is needed, a known mode.
func Validate(o *kilnv1.CacheOption, use Use) error {
	if o == nil {
		return rules.Invalidf("%s: empty cache option", use.flag())
	}
	if why, ok := elsewhere[o.GetType()]; ok {
		return rules.Invalidf("%s %s", use.flag(), why)
	}
	switch o.GetType() {
	case TypeInline:
		if use == From {
			return rules.Invalidf("--cache-from type=inline is not a cache source: import an image built with --cache-to type=inline by its ref (--cache-from type=registry,ref=IMAGE)")
		}
		if len(o.GetAttrs()) > 0 {
			return rules.Invalidf("--cache-to type=inline takes no attributes (got %s)", strings.Join(sortedKeys(o.GetAttrs()), ", "))
		}
		return nil
	case TypeRegistry:
	default:
		return rules.Invalidf("%s type=%.40q is not a cache type kiln accepts (registry or inline)", use.flag(), o.GetType())
	}
	for k := range o.GetAttrs() {
		if !registryAttrs[k] {
			return rules.Invalidf("%s type=registry does not take %.40q (it takes %s)", use.flag(), k, strings.Join(sortedKeys(registryAttrs), ", "))
		}
	}
	ref := o.GetAttrs()["ref"]
	if ref == "" {
		return rules.Invalidf("%s type=registry needs ref=REPOSITORY[:TAG]", use.flag())
	}
	if len(ref) > MaxRefLen || !refRE.MatchString(ref) {
		return rules.Invalidf("%s ref %.80q is not an image reference like registry:5000/team/app:cache", use.flag(), ref)
	}
	if m, ok := o.GetAttrs()["mode"]; ok {
		if use == From {
			return rules.Invalidf("--cache-from takes no mode (mode is --cache-to's)")
		}
		if m != ModeMin && m != ModeMax {
			return rules.Invalidf("--cache-to mode=%.20q: want min or max", m)
		}
	}
	return nil
}

// ValidateAll checks a build's cache_from and cache_to lists.
func ValidateAll(from, to []*kilnv1.CacheOption) error {
	if len(from) > MaxOptions || len(to) > MaxOptions {
		return rules.Invalidf("a build takes at most %d --cache-from and %d --cache-to entries", MaxOptions, MaxOptions)
	}
	for _, o := range from {
		if err := Validate(o, From); err != nil {
			return err
		}
	}
	for _, o := range to {
		if err := Validate(o, To); err != nil {
			return err
		}
	}
	return nil
}

// ParseAll parses a build's --cache-from and --cache-to values and checks
// them as ValidateAll does: what the CLI and the SDK send.
func ParseAll(fromValues, toValues []string) (from, to []*kilnv1.CacheOption, err error) {
	parse := func(values []string, use Use) ([]*kilnv1.CacheOption, error) {
		var out []*kilnv1.CacheOption
		for _, v := range values {
			o, err := Parse(v)
			if err == nil {
				err = Validate(o, use)
			}
			if err != nil {
				return nil, err
			}
			out = append(out, o)
		}
		return out, nil
	}
	if from, err = parse(fromValues, From); err != nil {
		return nil, nil, err
	}
	if to, err = parse(toValues, To); err != nil {
		return nil, nil, err
	}
	if err := ValidateAll(from, to); err != nil {
		return nil, nil, err
	}
	return from, to, nil
}

// Mode is an export's mode: the option's, min by default.
func Mode(o *kilnv1.CacheOption) string {
	if m := o.GetAttrs()["mode"]; m != "" {
		return m
	}
	return ModeMin
}

// RegistryExportFeature is the agent feature (Agent.features; the agent's
// engine.FeatureCacheExportRegistry) of an engine that exports registry
// cache: a build that NeedsRegistryExport runs only on an agent that has it.
const RegistryExportFeature = "cache-export-registry"

// NeedsRegistryExport says whether a build's cache_to has a type=registry
// entry, which only engines with the registry cache exporter can honour.
func NeedsRegistryExport(to []*kilnv1.CacheOption) bool {
	return slices.ContainsFunc(to, func(o *kilnv1.CacheOption) bool { return o.GetType() == TypeRegistry })
}

// Host is the registry host of an image reference as registry credentials
// are keyed (registryhost.Normalize): docker's rule, the first path
// component when it has a "." or a ":" or is "localhost", else Docker Hub.
func Host(ref string) string {
	first, _, ok := strings.Cut(ref, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return registryhost.Normalize(first)
	}
	return registryhost.DockerHub
}

// Hosts are the registry hosts the options' refs name, sorted, each once:
// the hosts whose credentials the client seals for the build.
func Hosts(opts ...[]*kilnv1.CacheOption) []string {
	set := map[string]bool{}
	for _, list := range opts {
		for _, o := range list {
			if ref := o.GetAttrs()["ref"]; ref != "" {
				set[Host(ref)] = true
			}
		}
	}
	return sortedKeys(set)
}

// WarmRef is the ref under which the automatic warm start keeps the cache
// of one lineage of one tenant: PREFIX/TENANT:LINEAGE (lineage cut to a
// tag's 128 characters). The lineage already hashes the repository,
// Dockerfile path and target, so one ref per lineage is one per target.
func WarmRef(prefix, tenant, lineage string) string {
	tag := strings.ToLower(lineage)
	if len(tag) > 128 {
		tag = tag[:128]
	}
	if tag == "" {
		tag = "no-lineage"
	}
	return fmt.Sprintf("%s/%s:%s", strings.TrimSuffix(prefix, "/"), repoComponent(tenant), tag)
}

// repoComponent makes a tenant name a valid repository path component.
func repoComponent(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" {
		return "default"
	}
	return out
}

// ValidPrefix checks a --cache-registry prefix: a repository without a tag,
// e.g. "registry:5000/kiln-cache".
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	ref := WarmRef(prefix, "t", "l")
	if strings.Contains(strings.TrimPrefix(prefix, Host(prefix)), ":") || len(prefix) > MaxRefLen-140 || !refRE.MatchString(ref) {
		return rules.Invalidf("cache registry %.80q is not a repository prefix like registry:5000/kiln-cache (no tag)", prefix)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
