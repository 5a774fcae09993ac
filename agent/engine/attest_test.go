package engine_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// registryManifest is a manifest or index as the registry serves it.
type registryManifest struct {
	mediaType   string
	digest      string
	size        int64
	Annotations map[string]string `json:"annotations"`
	Manifests   []struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Annotations map[string]string `json:"annotations"`
	} `json:"manifests"`
	Layers []struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"layers"`
}

// getManifest fetches repo's manifest or index ref (a tag or digest) from
// the plain-HTTP registry reg.
func getManifest(t *testing.T, reg, repo, ref string) registryManifest {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://%s/v2/%s/manifests/%s", reg, repo, ref), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{
		"application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json",
	}, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s", repo, ref, resp.Status)
	}
	var m registryManifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	m.mediaType, m.digest, m.size = resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), resp.ContentLength
	return m
}

// TestBuildKitdAnnotationsProvenanceAndCheck: on one buildkitd, manifest
// annotations reach the pushed OCI manifest and the result's descriptor is
// the registry's; a provenance attestation makes the push an index with
// the image and an attestation manifest holding SLSA provenance, the
// index carrying its index annotation; --call check answers buildx's text
// and counts the lint warnings without building, and targets lists the
// stages.
func TestBuildKitdAnnotationsProvenanceAndCheck(t *testing.T) {
	t.Parallel()
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	bk := startBuildKitd(t)
	info, err := bk.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{engine.FeatureAnnotations, engine.FeatureAttestations, engine.FeatureCall} {
		if !strings.Contains(strings.Join(info.Features, " "), f) {
			t.Fatalf("buildkitd features %q lack %s", info.Features, f)
		}
	}
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo %s > /n\n", base, n)})
	repo := "kiln-test/bkd-attest"
	build := func(tag string, o engine.BuildKitOptions) engine.BuildKitResult {
		t.Helper()
		o.Tags, o.ContextDir, o.SharedKey, o.Push = []string{reg + "/" + repo + ":" + tag}, dir, "kiln-test-attest-"+n, true
		var r recorder
		res, err := bk.BuildKit(t.Context(), o, &r)
		if err != nil {
			t.Fatalf("build %s: %v\nlog:\n%s", tag, err, strings.Join(r.logs, "\n"))
		}
		return res
	}

	// Annotations on the manifest; the descriptor is the registry's.
	res := build(n+"-ann", engine.BuildKitOptions{Annotations: map[string]string{
		"annotation-manifest.org.opencontainers.image.title": "title-" + n,
	}})
	m := getManifest(t, reg, repo, n+"-ann")
	if m.Annotations["org.opencontainers.image.title"] != "title-"+n {
		t.Fatalf("pushed manifest's annotations %v lack the title", m.Annotations)
	}
	d := res.Descriptor
	if d.MediaType != "application/vnd.oci.image.manifest.v1+json" || d.MediaType != m.mediaType || d.Digest != m.digest || d.Size != m.size {
		t.Fatalf("descriptor %+v, the registry serves %s %s (%d bytes)", d, m.mediaType, m.digest, m.size)
	}

	// Provenance: an index of the image and its attestation manifest.
	res = build(n+"-prov", engine.BuildKitOptions{
		Attests:     map[string]string{"attest:provenance": "mode=max"},
		Annotations: map[string]string{"annotation-index.org.opencontainers.image.description": "desc-" + n},
	})
	idx := getManifest(t, reg, repo, n+"-prov")
	if idx.mediaType != "application/vnd.oci.image.index.v1+json" || res.Descriptor.MediaType != idx.mediaType || res.Descriptor.Digest != idx.digest {
		t.Fatalf("provenance push: descriptor %+v, the registry serves %s %s", res.Descriptor, idx.mediaType, idx.digest)
	}
	if idx.Annotations["org.opencontainers.image.description"] != "desc-"+n {
		t.Fatalf("index annotations %v lack the description", idx.Annotations)
	}
	var provenance bool
	for _, md := range idx.Manifests {
		if md.Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
			continue
		}
		for _, l := range getManifest(t, reg, repo, md.Digest).Layers {
			provenance = provenance || strings.Contains(l.Annotations["in-toto.io/predicate-type"], "slsa.dev/provenance")
		}
	}
	if len(idx.Manifests) != 2 || !provenance {
		t.Fatalf("index lists %d manifests, provenance layer found: %v; want the image and its SLSA provenance", len(idx.Manifests), provenance)
	}

	// --call check: the lint warnings as buildx prints them; nothing built.
	check := func(dockerfile, call string) (engine.BuildKitResult, error) {
		cdir := t.TempDir()
		writeDir(t, cdir, map[string]string{"Dockerfile": dockerfile})
		var r recorder
		return bk.BuildKit(t.Context(), engine.BuildKitOptions{ContextDir: cdir, SharedKey: "kiln-test-check-" + nonce(), Call: call}, &r)
	}
	res, err = check(fmt.Sprintf("FROM %s as build\nRUN exit 3\n", base), "frontend.lint")
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	t.Logf("check:\n%s", res.CallOutput)
	if res.CheckWarnings != 1 || !strings.HasPrefix(res.CallOutput, "Check complete, 1 warning has been found!\n") ||
		!strings.Contains(res.CallOutput, "FromAsCasing") || res.ImageID != "" {
		t.Fatalf("check of FROM ... as: %+v", res)
	}
	res, err = check(fmt.Sprintf("FROM %s AS build\nRUN exit 3\n", base), "frontend.lint")
	if err != nil || res.CheckWarnings != 0 || res.CallOutput != "Check complete, no warnings found.\n" {
		t.Fatalf("check of a clean Dockerfile: %+v, %v", res, err)
	}
	res, err = check(fmt.Sprintf("FROM %s AS first\nFROM first AS second-%s\n", base, n), "frontend.targets")
	if err != nil || !strings.Contains(res.CallOutput, "second-"+n) {
		t.Fatalf("targets: %+v, %v", res, err)
	}
	_, err = check("FROM\n", "frontend.lint")
	var be *engine.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("check of a Dockerfile that does not parse: %v, want a *BuildError", err)
	}
}

// TestDockerRefusesAttestAndDescribes: a Docker engine refuses
// annotations, attestations and calls (its /build API would drop them),
// and Describe gives the registry's descriptor of a tag it pushed.
func TestDockerRefusesAttestAndDescribes(t *testing.T) {
	d := enginetest.Docker(t)
	for _, o := range []engine.BuildKitOptions{
		{Annotations: map[string]string{"annotation-manifest.a": "b"}},
		{Attests: map[string]string{"attest:provenance": ""}},
		{Call: "frontend.lint"},
	} {
		_, err := d.BuildKit(t.Context(), o, nil)
		var be *engine.BuildError
		if !errors.As(err, &be) || !strings.Contains(be.Message, "standalone BuildKit agent") {
			t.Fatalf("Docker BuildKit with %+v: %v, want a *BuildError naming the standalone BuildKit agent", o, err)
		}
	}
	reg := enginetest.Registry(t)
	repo := "kiln-test/engine-describe"
	n := nonce()
	tag := reg + "/" + repo + ":" + n
	buildTagged(t, tag)
	enginetest.UseDockerConfig(t, nil)
	digest, _, err := d.Push(t.Context(), tag, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := d.Describe(t.Context(), tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := getManifest(t, reg, repo, n)
	if desc.Digest != digest || desc.Digest != m.digest || desc.MediaType != m.mediaType || desc.Size != m.size {
		t.Fatalf("Describe = %+v; pushed %s, the registry serves %s %s (%d bytes)", desc, digest, m.mediaType, m.digest, m.size)
	}
}
