// Package outputs is the rule for a build's outputs (buildx --output): the
// CLI and SDK parse --output values with it before they send a build, and
// the gateway checks BuildSpec.outputs with it when it accepts one.
//
// The syntax is buildx's: comma-separated key=value pairs (CSV quoting),
// "type" naming the exporter, "dest" its destination; a value with no
// "type=" prefix and a single field is a destination ("-o DIR" is
// type=local,dest=DIR, "-o -" is type=tar,dest=-). type=registry is
// type=image,push=true. On a farm the image exporter only pushes (there is
// no engine on the client to keep an image in), so type=registry and
// type=image,push=true are --push, and type=image without push builds
// only. The one other output a build may have travels as a kilnv1.Output
// without its dest, which stays on the client.
package outputs

import (
	"encoding/csv"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

// Output types.
const (
	// TypeLocal writes the result's filesystem into a directory.
	TypeLocal = "local"
	// TypeTar writes the result's filesystem as one tar file.
	TypeTar = "tar"
	// TypeOCI writes the image as an OCI layout tarball.
	TypeOCI = "oci"
	// TypeDocker writes the image as a tarball docker load reads.
	TypeDocker = "docker"
	// TypeCacheOnly builds and keeps the cache, exporting nothing.
	TypeCacheOnly = "cacheonly"
	// TypeImage is BuildKit's image exporter: with push=true it pushes.
	TypeImage = "image"
	// TypeRegistry is buildx's name for type=image,push=true.
	TypeRegistry = "registry"
)

// Stdout is the dest that means standard output.
const Stdout = "-"

// MaxValueLen bounds one attribute's value.
const MaxValueLen = 4096

// wireAttrs are, by type, the attributes besides dest that travel to the
// farm in a kilnv1.Output; any other is refused rather than ignored.
var wireAttrs = map[string][]string{
	TypeLocal:     nil,
	TypeTar:       nil,
	TypeOCI:       {"name"},
	TypeDocker:    {"name"},
	TypeCacheOnly: nil,
}

// destTypes are the types that write to a dest on the client.
var destTypes = []string{TypeLocal, TypeTar, TypeOCI, TypeDocker}

// Entry is one --output value, parsed as buildx parses it.
type Entry struct {
	// Type is the exporter: local, tar, oci, docker, cacheonly or image
	// (type=registry is image with push=true).
	Type string
	// Attrs are the attributes other than type and dest.
	Attrs map[string]string
	// Dest is the dest attribute: a directory (local), a file, or Stdout.
	Dest string
}

// Parse parses one --output value in buildx's syntax. It checks the
// syntax only; Plan checks what kiln does with it.
func Parse(s string) (*Entry, error) {
	if s == "" {
		return nil, rules.Invalidf("--output is empty: want type=TYPE[,dest=PATH] or a directory")
	}
	fields, err := csv.NewReader(strings.NewReader(s)).Read()
	if err != nil {
		return nil, rules.Invalidf("--output %.80q is not comma-separated key=value pairs: %v", s, err)
	}
	if len(fields) == 1 && fields[0] == s && !strings.HasPrefix(s, "type=") {
		if s == Stdout {
			return &Entry{Type: TypeTar, Attrs: map[string]string{}, Dest: Stdout}, nil
		}
		return &Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: s}, nil
	}
	e := &Entry{Attrs: map[string]string{}}
	hasDest := false
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, rules.Invalidf("--output %.80q: %.40q is not key=value", s, f)
		}
		switch k = strings.ToLower(strings.TrimSpace(k)); k {
		case "type":
			e.Type = v
		case "dest":
			e.Dest, hasDest = v, true
		default:
			e.Attrs[k] = v
		}
	}
	if e.Type == "" {
		return nil, rules.Invalidf("--output %.80q has no type= (local, tar, oci, docker, registry, image or cacheonly)", s)
	}
	if hasDest && e.Dest == "" {
		return nil, rules.Invalidf("--output %.80q has an empty dest=", s)
	}
	if e.Type == TypeRegistry {
		e.Type = TypeImage
		if _, ok := e.Attrs["push"]; !ok {
			e.Attrs["push"] = "true"
		}
	}
	return e, nil
}

// Plan is what a build's --output values ask of kiln.
type Plan struct {
	// Push is set by type=registry and type=image,push=true.
	Push bool
	// Output is the one output the farm exports for the client (nil: none),
	// without its dest: what BuildSpec.outputs carries.
	Output *kilnv1.Output
	// Dest is Output's destination on the client: a directory for local,
	// a file or Stdout for the others ("" for cacheonly).
	Dest string
}

// ParsePlan parses a build's --output values and checks them as buildx
// and the farm would: known types, their attributes, a dest where one is
// needed, at most one output besides the registry.
func ParsePlan(values []string) (Plan, error) {
	var p Plan
	for _, v := range values {
		e, err := Parse(v)
		if err != nil {
			return Plan{}, err
		}
		if e.Type == TypeImage {
			push, err := imagePush(e)
			if err != nil {
				return Plan{}, err
			}
			p.Push = p.Push || push
			continue
		}
		o := &kilnv1.Output{Type: e.Type, Attrs: e.Attrs}
		if err := Validate(o); err != nil {
			return Plan{}, err
		}
		if err := checkDest(e); err != nil {
			return Plan{}, err
		}
		if p.Output != nil {
			return Plan{}, rules.Invalidf("--output: kiln exports one output per build besides the registry, got type=%s and type=%s", p.Output.Type, e.Type)
		}
		if len(o.Attrs) == 0 {
			o.Attrs = nil
		}
		p.Output, p.Dest = o, e.Dest
	}
	return p, nil
}

// imagePush checks a type=image (or registry) entry and says whether it
// pushes.
func imagePush(e *Entry) (bool, error) {
	if _, ok := e.Attrs["name"]; ok {
		return false, rules.Invalidf("--output type=%s: name= is not supported: name the image with --tag", TypeImage)
	}
	if e.Dest != "" {
		return false, rules.Invalidf("--output type=%s takes no dest=: it pushes to the registry of each --tag", TypeImage)
	}
	for k := range e.Attrs {
		if k != "push" {
			return false, rules.Invalidf("--output type=%s does not take %.40q: the farm pushes with its own settings (drop it)", TypeImage, k)
		}
	}
	push, err := strconv.ParseBool(e.Attrs["push"])
	if _, set := e.Attrs["push"]; set && err != nil {
		return false, rules.Invalidf("--output type=%s,push=%.20q: want true or false", TypeImage, e.Attrs["push"])
	}
	return push, nil
}

// checkDest requires a dest for the types that write one, as buildx does,
// and refuses the dests a farm's export cannot take.
func checkDest(e *Entry) error {
	switch {
	case e.Type == TypeCacheOnly && e.Dest != "":
		return rules.Invalidf("--output type=cacheonly takes no dest=: it exports nothing")
	case e.Type == TypeDocker && e.Dest == "":
		return rules.Invalidf("--output type=docker without dest= loads the image into the local engine, which kiln cannot do: use --output type=docker,dest=- | docker load, or --push and docker pull")
	case slices.Contains(destTypes, e.Type) && e.Dest == "":
		return rules.Invalidf("--output type=%s needs dest=%s", e.Type, map[bool]string{true: "DIR", false: "FILE"}[e.Type == TypeLocal])
	case e.Type == TypeLocal && e.Dest == Stdout:
		return rules.Invalidf("--output type=local,dest=- is not a directory: use type=tar,dest=- (or -o -) for the filesystem on standard output")
	}
	return nil
}

// Validate checks one output as the farm receives it: a type the farm
// exports, only the attributes that type takes, no dest (it stays on the
// client).
func Validate(o *kilnv1.Output) error {
	if o == nil {
		return rules.Invalidf("output is empty: give its type")
	}
	allowed, ok := wireAttrs[o.GetType()]
	if !ok {
		switch o.GetType() {
		case TypeImage, TypeRegistry:
			return rules.Invalidf("output type=%s is a push: set BuildSpec.push instead", o.GetType())
		}
		return rules.Invalidf("--output type=%.40q is not an output type kiln knows (local, tar, oci, docker, registry, image or cacheonly)", o.GetType())
	}
	for _, k := range sortedKeys(o.GetAttrs()) {
		if k == "dest" {
			return rules.Invalidf("output type=%s carries dest=, which stays on the client", o.GetType())
		}
		if !slices.Contains(allowed, k) {
			takes := "no attributes but dest"
			if len(allowed) > 0 {
				takes = "only dest and " + strings.Join(allowed, ", ")
			}
			return rules.Invalidf("--output type=%s does not take %.40q: kiln's type=%s takes %s", o.GetType(), k, o.GetType(), takes)
		}
		if v := o.GetAttrs()[k]; len(v) > MaxValueLen || strings.ContainsRune(v, 0) {
			return rules.Invalidf("--output type=%s: %s= is over %d bytes or holds a NUL byte", o.GetType(), k, MaxValueLen)
		}
	}
	return nil
}

// ValidateAll checks a build's outputs: at most one, each valid.
func ValidateAll(outs []*kilnv1.Output) error {
	if len(outs) > 1 {
		return rules.Invalidf("%d outputs given: kiln exports one output per build besides the registry", len(outs))
	}
	for _, o := range outs {
		if err := Validate(o); err != nil {
			return err
		}
	}
	return nil
}

// CheckPlatforms refuses an image tarball (oci, docker) of a build for
// several platforms: its children's images meet in the registry as one
// index. Their files (local, tar) go one subdirectory per platform.
func CheckPlatforms(outs []*kilnv1.Output, platforms int) error {
	for _, o := range outs {
		if platforms > 1 && (o.GetType() == TypeOCI || o.GetType() == TypeDocker) {
			return rules.Invalidf("--output type=%s holds one image: a multi-platform build's images meet in the registry as one index (--push); use type=local or type=tar for their files", o.GetType())
		}
	}
	return nil
}

// IsFilesystem reports whether an output type is the result's filesystem
// (local, tar) rather than an image tarball (oci, docker).
func IsFilesystem(typ string) bool { return typ == TypeLocal || typ == TypeTar }

// ExportsFiles reports whether outs export the result's files (a local
// or tar output).
func ExportsFiles(outs []*kilnv1.Output) bool {
	for _, o := range outs {
		if IsFilesystem(o.GetType()) {
			return true
		}
	}
	return false
}

// PlatformDir is the subdirectory (and tar prefix) a multi-platform
// build's local or tar output puts one platform's files under, as buildx
// does: "linux/arm64/v8" gives "linux_arm64_v8".
func PlatformDir(platform string) string { return strings.ReplaceAll(platform, "/", "_") }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// String spells an Output as --output would (without dest).
func String(o *kilnv1.Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "type=%s", o.GetType())
	for _, k := range sortedKeys(o.GetAttrs()) {
		fmt.Fprintf(&b, ",%s=%s", k, o.GetAttrs()[k])
	}
	return b.String()
}
