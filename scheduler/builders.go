package scheduler

import (
	"maps"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// builderLabel is the label the dispatcher gives an agent for each builder
// it offers ("kiln.builder.buildkit"), and requires of an agent for a build
// that needs one: the router then matches builders as it matches labels.
func builderLabel(b kilnv1.Builder) string {
	return "kiln.builder." + strings.ToLower(strings.TrimPrefix(b.String(), "BUILDER_"))
}

// routingAgentLabels are an agent's labels plus one per builder it offers.
func routingAgentLabels(a *kilnv1.Agent) map[string]string {
	if len(a.GetBuilders()) == 0 {
		return a.GetLabels()
	}
	out := maps.Clone(a.GetLabels())
	if out == nil {
		out = map[string]string{}
	}
	for _, b := range a.GetBuilders() {
		out[builderLabel(b)] = "true"
	}
	return out
}

// routingBuildLabels are a build's required agent labels plus the builder
// it needs: the one it asks for, or BuildKit for a build with secrets.
func routingBuildLabels(spec *kilnv1.BuildSpec) map[string]string {
	need := spec.GetBuilder()
	if need == kilnv1.Builder_BUILDER_UNSPECIFIED && len(spec.GetSecrets()) > 0 {
		need = kilnv1.Builder_BUILDER_BUILDKIT
	}
	if need == kilnv1.Builder_BUILDER_UNSPECIFIED {
		return spec.GetAgentLabels()
	}
	out := maps.Clone(spec.GetAgentLabels())
	if out == nil {
		out = map[string]string{}
	}
	out[builderLabel(need)] = "true"
	return out
}
