// Package attest is the rule for what a build asks its engine for beyond
// the image: attestations (BuildSpec.provenance and sbom, buildx
// --provenance, --sbom and --attest) and a frontend request instead of a
// build (BuildSpec.call, buildx --call and --check). The CLI parses them,
// the gateway checks them and refuses them when no agent can honour them,
// the scheduler routes a build to an engine with the Features it needs,
// and the agent turns them into frontend attributes.
package attest

import (
	"encoding/csv"
	"slices"
	"strconv"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/annotations"
)

// Engine features (Agent.features) these need; both are standalone
// BuildKit's only (Docker's /build API passes neither attestation nor
// request attributes to its frontend).
const (
	// FeatureAttestations: the engine attaches provenance and SBOM
	// attestations to the image it pushes.
	FeatureAttestations = "attestations"
	// FeatureCall: the engine's Dockerfile frontend answers requests
	// other than a build (--call check, outline, targets).
	FeatureCall = "frontend-requests"
)

// Attestation types, as buildx's --attest type= names them.
const (
	Provenance = "provenance"
	SBOM       = "sbom"
)

// attrs are the attributes each type takes, as buildx documents them.
var attrs = map[string][]string{
	Provenance: {"mode", "builder-id", "version", "reproducible", "inline-only", "filename"},
	SBOM:       {"generator", "scan-context", "scan-stage"},
}

// Attr reads one --provenance or --sbom value (typ Provenance or SBOM) as
// buildx does: "" (not given), "false", "0" or one with disabled=true ask
// for nothing; "true" or "1" for the attestation with BuildKit's defaults;
// otherwise comma-separated key=value attributes (provenance: mode=min|max,
// ...; sbom: generator=IMAGE, ...). on says whether the attestation is
// asked for, and value is the frontend's "attest:TYPE" attribute then.
// Its errors match rules.ErrInvalid.
func Attr(typ, v string) (value string, on bool, err error) {
	flag := "--" + typ
	if strings.TrimSpace(v) == "" {
		return "", false, nil
	}
	if b, err := strconv.ParseBool(v); err == nil {
		return "", b, nil
	}
	fields, err := csvFields(v)
	if err != nil {
		return "", false, rules.Invalidf("%s %q: %v", flag, v, err)
	}
	var kept []string
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		switch {
		case k == "disabled":
			d, err := strconv.ParseBool(val)
			if err != nil {
				return "", false, rules.Invalidf("%s %q: disabled=%s is not true or false", flag, v, val)
			}
			if d {
				return "", false, nil
			}
			continue
		case k == "type":
			return "", false, rules.Invalidf("%s %q: type= belongs to --attest (--attest type=%s,...)", flag, v, typ)
		case !ok:
			return "", false, rules.Invalidf("%s %q: want true, false or key=value attributes", flag, v)
		case !slices.Contains(attrs[typ], k):
			return "", false, rules.Invalidf("%s %q: %s attestations do not take %s= (they take %s)", flag, v, typ, k, strings.Join(attrs[typ], ", "))
		case typ == Provenance && k == "mode" && val != "min" && val != "max":
			return "", false, rules.Invalidf("%s %q: mode=%s: want min or max", flag, v, val)
		case typ == SBOM && k == "generator" && strings.TrimSpace(val) == "":
			return "", false, rules.Invalidf("%s %q: generator= names the scanner image", flag, v)
		}
		kept = append(kept, k+"="+val)
	}
	return csvJoin(kept), true, nil
}

// ParseAttest reads one --attest value, "type=provenance|sbom[,attrs]",
// into the type and the value its --provenance or --sbom flag would take.
func ParseAttest(v string) (typ, value string, err error) {
	fields, err := csvFields(v)
	if err != nil {
		return "", "", rules.Invalidf("--attest %q: %v", v, err)
	}
	var rest []string
	for _, f := range fields {
		k, val, _ := strings.Cut(f, "=")
		if strings.ToLower(strings.TrimSpace(k)) == "type" {
			typ = strings.ToLower(val)
			continue
		}
		rest = append(rest, f)
	}
	switch typ {
	case Provenance, SBOM:
	case "":
		return "", "", rules.Invalidf("--attest %q: no type= (type=provenance or type=sbom)", v)
	default:
		return "", "", rules.Invalidf("--attest %q: unknown type %q (provenance or sbom)", v, typ)
	}
	value = csvJoin(rest)
	if value == "" {
		value = "true"
	}
	return typ, value, nil
}

// Calls are the --call values: "build" builds, the others ask the
// Dockerfile frontend and build nothing.
const (
	CallBuild   = "build"
	CallCheck   = "check"
	CallOutline = "outline"
	CallTargets = "targets"
)

// ParseCall reads --call as buildx does ("" is build). Its errors match
// rules.ErrInvalid.
func ParseCall(v string) (string, error) {
	switch c := strings.ToLower(strings.TrimSpace(v)); c {
	case "", CallBuild:
		return "", nil
	case CallCheck, CallOutline, CallTargets:
		return c, nil
	}
	return "", rules.Invalidf("--call %q: want build, check, outline or targets", v)
}

// RequestID is the Dockerfile frontend's request id for a call
// ("frontend.lint" for check), "" for a build.
func RequestID(call string) string {
	switch call {
	case CallCheck:
		return "frontend.lint"
	case CallOutline, CallTargets:
		return "frontend." + call
	}
	return ""
}

// Attestations reports whether spec asks for any attestation.
func Attestations(spec *kilnv1.BuildSpec) bool {
	_, p, _ := Attr(Provenance, spec.GetProvenance())
	_, s, _ := Attr(SBOM, spec.GetSbom())
	return p || s
}

// CheckSpec checks spec's provenance, sbom, call and annotations: their
// syntax, and what they need of the rest of the build. Its errors match
// rules.ErrInvalid or rules.ErrOverLimit.
func CheckSpec(spec *kilnv1.BuildSpec) error {
	if _, _, err := Attr(Provenance, spec.GetProvenance()); err != nil {
		return err
	}
	if _, _, err := Attr(SBOM, spec.GetSbom()); err != nil {
		return err
	}
	call, err := ParseCall(spec.GetCall())
	if err != nil {
		return err
	}
	att := Attestations(spec)
	if att && !spec.GetPush() {
		return rules.Invalidf("--provenance and --sbom attach attestations to the image the farm pushes: add --push and a --tag")
	}
	if call != "" && (spec.GetPush() || len(spec.GetPlatforms()) > 1 || len(spec.GetOutputs()) > 0) {
		return rules.Invalidf("--call %s builds nothing: drop --push, --output and all but one --platform", call)
	}
	return annotations.CheckSpec(spec.GetAnnotations(), spec.GetPlatforms(), att)
}

// Features are the engine features spec needs beyond building: the
// scheduler routes the build to an agent that has them all, and the
// gateway refuses it when no live agent does.
func Features(spec *kilnv1.BuildSpec) []string {
	var out []string
	if len(spec.GetAnnotations()) > 0 {
		out = append(out, annotations.Feature)
	}
	if Attestations(spec) {
		out = append(out, FeatureAttestations)
	}
	if c, _ := ParseCall(spec.GetCall()); c != "" {
		out = append(out, FeatureCall)
	}
	return out
}

// csvFields splits v as buildx does: CSV, so a value may be quoted to
// hold a comma.
func csvFields(v string) ([]string, error) {
	r := csv.NewReader(strings.NewReader(v))
	r.LazyQuotes = false
	fields, err := r.Read()
	if err != nil {
		return nil, err
	}
	return fields, nil
}

// csvJoin joins fields as csvFields splits them.
func csvJoin(fields []string) string {
	if len(fields) == 0 {
		return ""
	}
	var b strings.Builder
	w := csv.NewWriter(&b)
	_ = w.Write(fields) // a strings.Builder does not fail
	w.Flush()
	return strings.TrimSuffix(strings.TrimSuffix(b.String(), "\n"), "\r")
}
