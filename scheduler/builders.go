package scheduler

import (
	"maps"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/attest"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
)

// builderLabel is the label the dispatcher gives an agent for each builder
// it offers ("kiln.builder.buildkit"), and requires of an agent for a build
// that needs one: the router then matches builders as it matches labels.
func builderLabel(b kilnv1.Builder) string {
	return "kiln.builder." + strings.ToLower(strings.TrimPrefix(b.String(), "BUILDER_"))
}

// featureLabel is the label the dispatcher gives an agent for each feature
// its engine advertises (Agent.features: "kiln.feature.cache-export-registry"),
// and requires of an agent for a build that needs the feature.
func featureLabel(feature string) string { return "kiln.feature." + feature }

// platformLabel is the label the dispatcher gives an agent for each
// platform it builds, natively or emulated ("kiln.platform.linux/arm64"),
// and requires of an agent for a build for one platform.
func platformLabel(p string) string { return "kiln.platform." + p }

// nativeLabel is the label the dispatcher gives an agent for each platform
// it builds natively ("kiln.platform.native.linux/arm64"), and prefers for
// a build for that platform.
func nativeLabel(p string) string { return "kiln.platform.native." + p }

// routingAgentLabels are an agent's labels plus one per builder it offers,
// one per feature its engine has and one per platform it builds.
func routingAgentLabels(a *kilnv1.Agent) map[string]string {
	if len(a.GetBuilders()) == 0 && len(a.GetFeatures()) == 0 && len(a.GetPlatforms()) == 0 && len(a.GetEmulatedPlatforms()) == 0 {
		return a.GetLabels()
	}
	out := maps.Clone(a.GetLabels())
	if out == nil {
		out = map[string]string{}
	}
	for _, b := range a.GetBuilders() {
		out[builderLabel(b)] = "true"
	}
	for _, f := range a.GetFeatures() {
		out[featureLabel(f)] = "true"
	}
	for _, p := range a.GetPlatforms() {
		out[platformLabel(p)] = "true"
		out[nativeLabel(p)] = "true"
	}
	for _, p := range a.GetEmulatedPlatforms() {
		out[platformLabel(p)] = "true"
	}
	return out
}

// routingBuildLabels are a build's required agent labels plus the builder
// it needs (the one it asks for, or BuildKit for a build with secrets, ssh
// keys, named contexts or a Git URL context), the registry cache exporter when its --cache-to has a
// type=registry, its platform when it names one, and the engine features
// its annotations, attestations, --call or named contexts need.
func routingBuildLabels(spec *kilnv1.BuildSpec) map[string]string {
	need := spec.GetBuilder()
	if need == kilnv1.Builder_BUILDER_UNSPECIFIED && (len(spec.GetSecrets()) > 0 || len(spec.GetSsh()) > 0 ||
		len(spec.GetBuildContexts()) > 0 || spec.GetGitContext() != "") {
		need = kilnv1.Builder_BUILDER_BUILDKIT
	}
	export := cacheopt.NeedsRegistryExport(spec.GetCacheTo())
	platform := ""
	if ps := spec.GetPlatforms(); len(ps) == 1 {
		platform = ps[0]
	}
	features := attest.Features(spec)
	if len(spec.GetBuildContexts()) > 0 {
		features = append(features, namedctx.Feature)
	}
	if need == kilnv1.Builder_BUILDER_UNSPECIFIED && !export && platform == "" && len(features) == 0 {
		return spec.GetAgentLabels()
	}
	out := maps.Clone(spec.GetAgentLabels())
	if out == nil {
		out = map[string]string{}
	}
	if need != kilnv1.Builder_BUILDER_UNSPECIFIED {
		out[builderLabel(need)] = "true"
	}
	if export {
		out[featureLabel(cacheopt.RegistryExportFeature)] = "true"
	}
	if platform != "" {
		out[platformLabel(platform)] = "true"
	}
	for _, f := range features {
		out[featureLabel(f)] = "true"
	}
	return out
}

// routingBuildPreferred is, for a build for one platform, its required
// labels plus the native builder's: the router prefers an agent that
// builds the platform natively while one is free (nil for other builds).
func routingBuildPreferred(spec *kilnv1.BuildSpec) map[string]string {
	ps := spec.GetPlatforms()
	if len(ps) != 1 {
		return nil
	}
	out := routingBuildLabels(spec)
	out[nativeLabel(ps[0])] = "true"
	return out
}
