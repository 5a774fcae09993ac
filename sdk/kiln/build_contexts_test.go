package kiln_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPackNamedContext: a named context needs no Dockerfile and honours
// only its own .dockerignore.
func TestPackNamedContext(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"a.txt": "a", "b.log": "b", ".dockerignore": "*.log\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kiln.PackContext(t.Context(), dir, ""); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PackContext of a directory without a Dockerfile: %v, want InvalidArgument", err)
	}
	bc, err := kiln.PackNamedContext(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range bc.Manifest().GetEntries() {
		paths = append(paths, e.GetPath())
	}
	if strings.Join(paths, ",") != ".dockerignore,a.txt" || bc.Dockerfile() != "" || bc.DockerfileInline() != nil {
		t.Fatalf("named context holds %v, Dockerfile %q", paths, bc.Dockerfile())
	}
}

// TestBuildUploadsNamedContexts: Build uploads a named context through
// the CAS like the main one and sends it under its normalised name; the
// farm's Docker agents cannot resolve it, so the farm refuses the build
// with FailedPrecondition. A bad name or source fails before anything is
// sent.
func TestBuildUploadsNamedContexts(t *testing.T) {
	c := dialFarm(t)
	named, err := kiln.PackNamedContext(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	req := kiln.BuildRequest{Context: packDockerfile(t, "FROM scratch\n"), BuildContexts: map[string]*kiln.Context{"docker.io/library/base:latest": named}}
	_, err = c.Build(t.Context(), req)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--build-context needs an agent") {
		t.Fatalf("Build with a named context on Docker agents: %v, want FailedPrecondition", err)
	}
	if named.Ref() == nil {
		t.Fatal("the named context was not uploaded")
	}
	for _, spec := range []*kilnv1.BuildSpec{
		{BuildContexts: []*kilnv1.NamedContext{{Name: "x", Source: "target:y"}}},
		{GitContext: "https://tok@h/r.git"},
	} {
		_, err := c.Build(t.Context(), kiln.BuildRequest{Spec: spec, Context: packDockerfile(t, "FROM scratch\n")})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Build with spec %v: %v, want InvalidArgument", spec, err)
		}
	}
}
