package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// attestManifest is a manifest or an index as the registry serves it.
type attestManifest struct {
	mediaType, digest string
	size              int64
	Annotations       map[string]string `json:"annotations"`
	Manifests         []struct {
		Digest      string            `json:"digest"`
		Annotations map[string]string `json:"annotations"`
	} `json:"manifests"`
	Layers []struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"layers"`
}

// getAttestManifest fetches repo's manifest or index ref (tag or digest)
// from the plain-HTTP registry reg.
func getAttestManifest(t *testing.T, reg, repo, ref string) attestManifest {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://%s/v2/%s/manifests/%s", reg, repo, ref), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "+
		"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s", repo, ref, resp.Status)
	}
	var m attestManifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	m.mediaType, m.digest, m.size = resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), resp.ContentLength
	return m
}

// checkDescriptor fails unless the metadata file's containerimage.descriptor
// (and digest) is what the registry serves for repo:tag, and its
// buildx.build.ref names the farm's build.
func checkDescriptor(t *testing.T, mdPath, reg, repo, tag string) attestManifest {
	t.Helper()
	md := metadata(t, mdPath)
	m := getAttestManifest(t, reg, repo, tag)
	d, _ := md["containerimage.descriptor"].(map[string]any)
	if str(d, "mediaType") != m.mediaType || str(d, "digest") != m.digest || num(d, "size") != int(m.size) || str(md, "containerimage.digest") != m.digest {
		t.Fatalf("metadata descriptor %v (digest %s); the registry serves %s %s (%d bytes)", d, str(md, "containerimage.digest"), m.mediaType, m.digest, m.size)
	}
	if want := "kiln/" + str(md, "kiln.agent") + "/" + str(md, "kiln.build.id"); str(md, "buildx.build.ref") != want || str(md, "kiln.build.id") == "" {
		t.Fatalf("buildx.build.ref %q, want %q", str(md, "buildx.build.ref"), want)
	}
	return m
}

// TestAttestBuildKitd: on a standalone BuildKit agent, --annotation and
// --provenance reach the registry (an index of the image, whose manifest
// carries the annotation, and its SLSA provenance attestation, the index
// carrying the index annotation) and the metadata file's descriptor is
// the index's, also for two platforms (each child's provenance listed in
// the farm's index); --check prints the lint warning as buildx does and exits 1,
// pushing nothing.
func TestAttestBuildKitd(t *testing.T) {
	t.Parallel()
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	k := startKilndOnBuildKitd(t, bk, "buildkit://"+strings.TrimPrefix(bk.Addr, "unix://"))
	base := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	n := uniq()
	repo := "kiln-test/attest"
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo %s > /n\n", base, n)})
	md := filepath.Join(t.TempDir(), "md.json")
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--push", "-t", reg+"/"+repo+":"+n, "--metadata-file", md,
		"--annotation", "org.opencontainers.image.title=title-"+n, "--annotation", "index:org.opencontainers.image.description=desc-"+n,
		"--provenance=mode=max", dir)
	if r.code != 0 {
		t.Fatalf("build with --annotation --provenance: %s", r)
	}
	idx := checkDescriptor(t, md, reg, repo, n)
	if idx.mediaType != "application/vnd.oci.image.index.v1+json" || idx.Annotations["org.opencontainers.image.description"] != "desc-"+n {
		t.Fatalf("pushed %s with annotations %v: want an OCI index with the description", idx.mediaType, idx.Annotations)
	}
	var title, provenance bool
	for _, e := range idx.Manifests {
		m := getAttestManifest(t, reg, repo, e.Digest)
		if e.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			for _, l := range m.Layers {
				provenance = provenance || strings.Contains(l.Annotations["in-toto.io/predicate-type"], "slsa.dev/provenance")
			}
			continue
		}
		title = title || m.Annotations["org.opencontainers.image.title"] == "title-"+n
	}
	if !title || !provenance {
		t.Fatalf("image manifest annotated: %v, SLSA provenance attestation: %v; want both", title, provenance)
	}

	// Two platforms: each child pushes its image with its provenance, and
	// the index the farm writes lists them all with the index annotation.
	// FROM scratch and COPY run no step, so arm64 needs no emulation.
	multi := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY f-${TARGETARCH} /f\n", "f-amd64": n, "f-arm64": n})
	md = filepath.Join(t.TempDir(), "md-multi.json")
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--push", "-t", reg+"/"+repo+":"+n+"-multi", "--metadata-file", md,
		"--platform", "linux/amd64,linux/arm64", "--annotation", "index:org.opencontainers.image.description=multi-"+n, "--provenance=true", multi)
	if r.code != 0 {
		t.Fatalf("two-platform build with --provenance: %s", r)
	}
	idx = checkDescriptor(t, md, reg, repo, n+"-multi")
	attestations := 0
	for _, e := range idx.Manifests {
		if e.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			attestations++
		}
	}
	if idx.Annotations["org.opencontainers.image.description"] != "multi-"+n || len(idx.Manifests) != 4 || attestations != 2 {
		t.Fatalf("two-platform index: annotations %v, %d manifests of which %d attestations; want the description, two images and two attestations", idx.Annotations, len(idx.Manifests), attestations)
	}

	lint := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s as build\nRUN exit 3\n", base)})
	r = kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--check", lint)
	if r.code != 1 || !strings.HasPrefix(r.stdout, "Check complete, 1 warning has been found!\n") || !strings.Contains(r.stdout, "FromAsCasing") ||
		strings.Contains(r.stderr, "exit code: 3") {
		t.Fatalf("--check of FROM ... as: want exit 1 and buildx's warning on stdout, nothing built; got %s", r)
	}
}

// TestAttestRefusedOnDocker: on a farm whose only agent drives a Docker
// engine, --annotation, --provenance and --check are refused before the
// build is queued (exit 2, the gateway's message naming what to run),
// --provenance=false is fine, and the metadata file of a pushed build
// has the registry's descriptor, which the agent asks the registry for.
func TestAttestRefusedOnDocker(t *testing.T) {
	k := sharedKilnd(t)
	reg := enginetest.Registry(t)
	n := uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo %s > /n\n", enginetest.BusyboxBase(t), n)})
	tag := reg + "/kiln-test/attest-docker:" + n
	for _, flags := range [][]string{
		{"--annotation", "org.opencontainers.image.title=x"},
		{"--push", "-t", tag, "--provenance=true"},
		{"--check"},
	} {
		r := kiln(t, k.addrs.GRPC, append(append([]string{"build", "--progress", "plain"}, flags...), dir)...)
		if r.code != 2 || !strings.Contains(r.stderr, "need an agent whose engine is a standalone BuildKit") || strings.Contains(r.stderr, "queued") {
			t.Fatalf("%v on a Docker farm: want exit 2 with the gateway's refusal before queueing, got %s", flags, r)
		}
	}
	md := filepath.Join(t.TempDir(), "md.json")
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--push", "-t", tag, "--provenance=false", "--sbom=false", "--metadata-file", md, dir)
	if r.code != 0 {
		t.Fatalf("build with --provenance=false --sbom=false: %s", r)
	}
	checkDescriptor(t, md, reg, "kiln-test/attest-docker", n)
}
