package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// DefaultRegistry is the registry `make dev-env` runs.
const DefaultRegistry = "127.0.0.1:5000"

// manifestTypes are the manifest media types a registry may answer with for
// a single-platform image.
var manifestTypes = []string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
}

// Registry returns the host:port of the plain-HTTP registry the tests push to:
// KILN_TEST_REGISTRY, else DefaultRegistry. It fails the test if the
// registry's /v2/ does not answer 200.
func Registry(t testing.TB) string {
	t.Helper()
	reg := os.Getenv("KILN_TEST_REGISTRY")
	if reg == "" {
		reg = DefaultRegistry
	}
	ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
	defer cancel()
	if err := ping(ctx, reg); err != nil {
		t.Fatalf("enginetest: no registry answers at %s: %v\nstart one with `make dev-env`", reg, err)
	}
	return reg
}

func ping(ctx context.Context, reg string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+reg+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// ManifestDigest returns the digest the registry gives the manifest of
// repo:tag (its Docker-Content-Digest). It fails the test if there is none.
func ManifestDigest(t testing.TB, registry, repo, tag string) string {
	t.Helper()
	m, err := fetchManifest(context.Background(), registry, repo, tag)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	if !m.found {
		t.Fatalf("enginetest: registry %s has no manifest for %s:%s", registry, repo, tag)
	}
	return m.digest
}

// manifest is what a registry holds for one tag.
type manifest struct {
	found        bool
	digest       string // Docker-Content-Digest
	configDigest string // the image ID of the image it describes
}

func fetchManifest(ctx context.Context, registry, repo, tag string) (manifest, error) {
	url := fmt.Sprintf("http://%s/v2/%s/manifests/%s", registry, repo, tag)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return manifest{}, err
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return manifest{}, fmt.Errorf("manifest of %s:%s: %w", repo, tag, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return manifest{}, nil
	}
	if resp.StatusCode != http.StatusOK {
		return manifest{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var body struct {
		Config struct{ Digest string }
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&body); err != nil {
		return manifest{}, fmt.Errorf("GET %s: %w", url, err)
	}
	d := resp.Header.Get("Docker-Content-Digest")
	if d == "" {
		return manifest{}, fmt.Errorf("GET %s: no Docker-Content-Digest header", url)
	}
	return manifest{found: true, digest: d, configDigest: body.Config.Digest}, nil
}
