package agent

import (
	"maps"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestAttestOptions: a build's annotations, attestations and call become
// the engine's options — a child of a multi-platform build leaves the
// index annotations to the index writer, a check pushes nothing — and an
// SBOM scanner not allowed as a frontend, or attestations asked for by
// build arg, are refused; an engine without the features refuses them.
func TestAttestOptions(t *testing.T) {
	a := &Agent{cfg: Config{Name: "a1", FrontendAllow: []string{"127.0.0.1:5000/kiln/*"}}}
	a.info = engine.Info{Platforms: []string{"linux/amd64"}, Features: []string{engine.FeatureAnnotations, engine.FeatureAttestations, engine.FeatureCall}}
	b := &kilnv1.Build{Tenant: "t", Spec: &kilnv1.BuildSpec{
		Push: true, Tags: []string{"r/a:1"}, Provenance: "mode=max", Sbom: "generator=127.0.0.1:5000/kiln/syft:1",
		Annotations: []string{"a=1", "manifest[linux/arm64]:b=2", "index:c=3"},
	}}
	var o engine.BuildKitOptions
	if err := a.attestOptions(&o, b); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"annotation-manifest.a": "1", "annotation-index.c": "3"}; !maps.Equal(o.Annotations, want) {
		t.Errorf("annotations %v, want %v", o.Annotations, want)
	}
	if want := map[string]string{"attest:provenance": "mode=max", "attest:sbom": "generator=127.0.0.1:5000/kiln/syft:1"}; !maps.Equal(o.Attests, want) || o.Call != "" {
		t.Errorf("attests %v call %q, want %v", o.Attests, o.Call, want)
	}
	if err := a.checkAttest(b.Spec); err != nil {
		t.Errorf("checkAttest on an engine with the features: %v", err)
	}

	child := &kilnv1.Build{ParentId: "p", Spec: &kilnv1.BuildSpec{Push: true, Tags: []string{"r/a:1"}, Provenance: "true",
		Platforms: []string{"linux/arm64"}, Annotations: []string{"a=1", "manifest[linux/arm64]:b=2", "index:c=3"}}}
	o = engine.BuildKitOptions{}
	if err := a.attestOptions(&o, child); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"annotation-manifest.a": "1", "annotation-manifest.b": "2"}; !maps.Equal(o.Annotations, want) {
		t.Errorf("child's annotations %v, want %v", o.Annotations, want)
	}

	o = engine.BuildKitOptions{Push: true}
	if err := a.attestOptions(&o, &kilnv1.Build{Spec: &kilnv1.BuildSpec{Call: "check"}}); err != nil || o.Call != "frontend.lint" || o.Push {
		t.Errorf("check: %v, call %q push %v", err, o.Call, o.Push)
	}

	for _, tc := range []struct {
		spec *kilnv1.BuildSpec
		want string
	}{
		{&kilnv1.BuildSpec{Push: true, Sbom: "true"}, "docker/buildkit-syft-scanner:stable-1 is refused by policy"},
		{&kilnv1.BuildSpec{Push: true, Sbom: "generator=evil.example/scanner"}, "evil.example/scanner is refused by policy"},
		{&kilnv1.BuildSpec{BuildArgs: map[string]string{"BUILDKIT_ATTEST_SBOM": "generator=evil.example/x"}}, "build arg BUILDKIT_ATTEST_SBOM is refused"},
	} {
		o = engine.BuildKitOptions{}
		if err := a.attestOptions(&o, &kilnv1.Build{Spec: tc.spec}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.spec, err, tc.want)
		}
	}

	docker := &Agent{cfg: Config{Name: "d1"}}
	if err := docker.checkAttest(&kilnv1.BuildSpec{Call: "check"}); err == nil || !strings.Contains(err.Error(), "frontend-requests") {
		t.Errorf("checkAttest on an engine without the feature: %v", err)
	}
}
