package agent

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/policy"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/annotations"
	"github.com/kilnbuild/kiln/proto/rules/attest"
)

// A build's annotations, attestations and --call (proto/rules/attest):
// checkAttest refuses them on an engine without their features,
// attestOptions turns them into the engine's options, and the result
// gets the engine's answer and the pushed image's descriptor.

// checkAttest refuses a build asking for what the agent's engine lacks
// (the scheduler routes such builds to engines that have it; an agent
// whose engine changed since may still get one).
func (a *Agent) checkAttest(spec *kilnv1.BuildSpec) error {
	if err := attest.CheckSpec(spec); err != nil {
		return err
	}
	have := a.engineInfo().Features
	for _, f := range attest.Features(spec) {
		if !slices.Contains(have, f) {
			return fmt.Errorf("this build needs an engine with %q (a standalone BuildKit agent: kiln-agent --engine buildkit://…); agent %s's engine lacks it", f, a.cfg.Name)
		}
	}
	return nil
}

// defaultSBOMGenerator is the scanner image BuildKit runs for --sbom
// without generator=.
const defaultSBOMGenerator = "docker/buildkit-syft-scanner:stable-1"

// attestOptions sets o's Annotations, Attests and Call from b's spec. The
// annotations are those of the image this build makes for its platform
// (the engine's own when it names none); a multi-platform build's index
// annotations are the index writer's, not its children's. The SBOM
// scanner is an image the engine runs, so it must be allowed as a
// frontend is (the agent's --frontend-allow or the tenant's
// frontend_allow), and build args cannot ask for attestations behind the
// flags' back (BUILDKIT_ATTEST_*, which the Dockerfile frontend reads).
func (a *Agent) attestOptions(o *engine.BuildKitOptions, b *kilnv1.Build) error {
	spec := b.GetSpec()
	for k := range spec.GetBuildArgs() {
		if strings.HasPrefix(strings.ToUpper(k), "BUILDKIT_ATTEST_") {
			return fmt.Errorf("build arg %s is refused: ask for attestations with --provenance or --sbom", k)
		}
	}
	as, err := annotations.Parse(spec.GetAnnotations())
	if err != nil {
		return err
	}
	platform := specPlatform(spec)
	if ps := a.engineInfo().Platforms; platform == "" && len(ps) > 0 {
		platform = ps[0]
	}
	attests := map[string]string{}
	for _, t := range []struct{ typ, value string }{{attest.Provenance, spec.GetProvenance()}, {attest.SBOM, spec.GetSbom()}} {
		v, on, err := attest.Attr(t.typ, t.value)
		if err != nil {
			return err
		}
		if !on {
			continue
		}
		if t.typ == attest.SBOM {
			if err := a.checkSBOMGenerator(b, v); err != nil {
				return err
			}
		}
		attests["attest:"+t.typ] = v
	}
	if len(as) > 0 {
		o.Annotations = annotations.ExporterAttrs(as, platform, len(attests) > 0 && b.GetParentId() == "")
	}
	if len(attests) > 0 {
		o.Attests = attests
	}
	call, err := attest.ParseCall(spec.GetCall())
	if err != nil {
		return err
	}
	o.Call = attest.RequestID(call)
	if call != "" {
		o.Push = false // a check builds nothing to push
	}
	return nil
}

// checkSBOMGenerator refuses an SBOM scanner image (attrs' generator=,
// else BuildKit's default) that neither the agent's frontend list nor the
// tenant's frontend_allow names, as the policy refuses a "# syntax="
// frontend: the engine would pull and run it.
func (a *Agent) checkSBOMGenerator(b *kilnv1.Build, attrs string) error {
	img := defaultSBOMGenerator
	for _, f := range strings.Split(attrs, ",") {
		if v, ok := strings.CutPrefix(strings.Trim(f, `"`), "generator="); ok {
			img = v
		}
	}
	allowed := policy.FromRecord(b.GetTenant(), b.GetPolicy(), a.cfg.FrontendAllow).Frontends
	for _, pat := range allowed {
		if ok, _ := path.Match(pat, img); ok || pat == img {
			return nil
		}
	}
	list := strings.Join(allowed, ", ")
	if list == "" {
		list = "none"
	}
	return fmt.Errorf("--sbom scanner image %s is refused by policy: the engine would run it, and it is not among the allowed frontend images (%s; kiln-agent --frontend-allow or the tenant's frontend_allow)", img, list)
}

// attestResult copies what the engine answered into the build's result.
func attestResult(result *kilnv1.BuildResult, res engine.BuildKitResult) {
	result.CallOutput = res.CallOutput
	result.CheckWarnings = uint32(res.CheckWarnings)
	if d := res.Descriptor; d.Digest != "" {
		result.Descriptor_ = &kilnv1.ImageDescriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
	}
}

// describer is an engine that can ask the registry for a pushed tag's
// descriptor (Docker; a buildkitd reports it with the push).
type describer interface {
	Describe(ctx context.Context, tag string, creds engine.Credentials) (engine.Descriptor, error)
}

// describePushed fills result.Descriptor after the agent pushed the tags
// itself, from the registry's answer for the first tag (every tag has
// the same manifest). It is no failure when the engine cannot say: the
// image is pushed, and the descriptor stays empty, with a warning.
func (a *Agent) describePushed(ctx context.Context, result *kilnv1.BuildResult, creds engine.Credentials, ev *events) {
	d, ok := a.cfg.Engine.(describer)
	if !ok || result.Descriptor_ != nil || len(result.Pushed) == 0 {
		return
	}
	desc, err := d.Describe(ctx, result.Pushed[0].Tag, creds)
	if err != nil {
		ev.logger.WarnContext(ctx, "describe the pushed image", "tag", result.Pushed[0].Tag, "err", err)
		return
	}
	result.Descriptor_ = &kilnv1.ImageDescriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
}
