package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
)

// Builder names as flags and engine.Info spell them.
const (
	BuilderAuto     = "auto"
	BuilderBuildKit = "buildkit"
	BuilderClassic  = "classic"
)

// builders returns what this agent offers, preferred first: what the
// engine offers, narrowed by --builder.
func (a *Agent) builders() []kilnv1.Builder {
	a.mu.Lock()
	offered := a.info.Builders
	if a.runc.refusal != "" { // an engine refused for its runc offers nothing
		offered = nil
	}
	a.mu.Unlock()
	var out []kilnv1.Builder
	for _, b := range offered {
		if a.cfg.Builder != "" && a.cfg.Builder != BuilderAuto && a.cfg.Builder != b {
			continue
		}
		switch b {
		case BuilderBuildKit:
			out = append(out, kilnv1.Builder_BUILDER_BUILDKIT)
		case BuilderClassic:
			out = append(out, kilnv1.Builder_BUILDER_CLASSIC)
		}
	}
	return out
}

// chooseBuilder picks the builder for a build: the one asked for, else
// BuildKit where offered; a build with secrets or cache options needs
// BuildKit. A build whose context is a tar (API clients other than the
// kiln CLI) that asks for neither goes to the classic builder, which reads
// tars; an engine without one (a standalone BuildKit) refuses it.
func (a *Agent) chooseBuilder(spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef) (kilnv1.Builder, error) {
	offered := a.builders()
	if len(offered) == 0 {
		return 0, fmt.Errorf("agent %q knows of no builder its engine offers (the engine has not answered yet)", a.cfg.Name)
	}
	want := spec.GetBuilder()
	needs := "" // what needs BuildKit
	switch {
	case len(spec.GetSecrets()) > 0:
		needs = "build secrets"
	case len(spec.GetSsh()) > 0:
		needs = "ssh keys (--ssh)"
	case len(spec.GetCacheFrom()) > 0 || len(spec.GetCacheTo()) > 0:
		needs = "cache options (--cache-from, --cache-to)"
	case len(spec.GetOutputs()) > 0 && spec.Outputs[0].GetType() != outputs.TypeCacheOnly:
		needs = "exported outputs (--output " + spec.Outputs[0].GetType() + ")"
	case len(spec.GetBuildContexts()) > 0 || spec.GetGitContext() != "":
		needs = "build contexts (--build-context, a Git URL context)"
	}
	if needs != "" {
		if want == kilnv1.Builder_BUILDER_CLASSIC {
			return 0, fmt.Errorf("%s need the BuildKit builder, and the build asks for the classic one (--builder classic)", needs)
		}
		want = kilnv1.Builder_BUILDER_BUILDKIT
	}
	tar := ref.GetFormat() == kilnv1.ContextFormat_CONTEXT_FORMAT_TAR
	if want == kilnv1.Builder_BUILDER_UNSPECIFIED && tar {
		want = kilnv1.Builder_BUILDER_CLASSIC
	}
	switch {
	case want == kilnv1.Builder_BUILDER_UNSPECIFIED:
		return offered[0], nil
	case slices.Contains(offered, want):
		return want, nil
	case want == kilnv1.Builder_BUILDER_BUILDKIT:
		why := "the build asks for BuildKit (--builder buildkit)"
		if needs != "" {
			why = needs + " need BuildKit"
		}
		return 0, fmt.Errorf("%s, and agent %q offers only the classic builder (its engine has no BuildKit, or the agent runs with --builder classic)", why, a.cfg.Name)
	case want == kilnv1.Builder_BUILDER_CLASSIC && a.engineInfo().Kind == engine.KindBuildKit:
		if tar && spec.GetBuilder() == kilnv1.Builder_BUILDER_UNSPECIFIED {
			return 0, fmt.Errorf("the build's context is a tar (sent by an API client other than the kiln CLI), which only the classic builder reads, and agent %q drives a standalone BuildKit engine, which has no classic builder: send a manifest context (kiln CLI 0.2 or later) or build on a Docker engine", a.cfg.Name)
		}
		return 0, fmt.Errorf("the build asks for the classic builder (--builder classic), and agent %q drives a standalone BuildKit engine, which has no classic builder: drop --builder classic or build on a Docker engine", a.cfg.Name)
	default:
		return 0, fmt.Errorf("the build asks for the %s builder, which agent %q does not offer", builderName(want), a.cfg.Name)
	}
}

func builderName(b kilnv1.Builder) string {
	switch b {
	case kilnv1.Builder_BUILDER_BUILDKIT:
		return BuilderBuildKit
	case kilnv1.Builder_BUILDER_CLASSIC:
		return BuilderClassic
	}
	return "unspecified"
}

// classicHint explains a classic-builder failure that BuildKit would not
// have: the Dockerfile uses BuildKit-only syntax.
func classicHint(err error, offered []kilnv1.Builder) error {
	var be *engine.BuildError
	if !errors.As(err, &be) {
		return err
	}
	msg := strings.ToLower(be.Message)
	if !strings.Contains(msg, "requires buildkit") && !strings.Contains(msg, "unknown flag: mount") && !strings.Contains(msg, "<<") && !strings.Contains(msg, "unknown instruction") {
		return err
	}
	why := "this agent offers only the classic builder (its engine has no BuildKit, or it runs with --builder classic)"
	if slices.Contains(offered, kilnv1.Builder_BUILDER_BUILDKIT) {
		why = "the build asked for the classic builder (--builder classic)"
	}
	be.Message += fmt.Sprintf(" (this Dockerfile needs BuildKit — RUN --mount, heredocs and other BuildKit syntax are not understood by the classic builder — and %s)", why)
	return be
}
