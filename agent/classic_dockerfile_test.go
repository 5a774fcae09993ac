package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// A classic build of a Dockerfile sent apart from the context gets it in
// the context tar as the docker CLI sends it: under a random name that
// .dockerignore lists, so COPY . sees only the context's own files (the
// engine drops what .dockerignore lists of .dockerignore and the
// Dockerfile; the client left out the rest).
func TestClassicBuildOfAnInlineDockerfile(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	docker := enginetest.APIClient(t)
	a := testAgent(t, conn)
	n := fmt.Sprintf("%x", rand.Uint64())
	dockerfile := fmt.Sprintf("FROM %s\nCOPY . /ctx/\nRUN echo %s && ls -A /ctx | sed 's/^/ctx: /'\n", base, n)

	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{name: "no .dockerignore", files: map[string]string{"f": "f\n"}, want: []string{"ctx: f"}},
		{name: "the context's .dockerignore", files: map[string]string{"f": "f\n", ".dockerignore": "g"}, want: []string{"ctx: .dockerignore", "ctx: f"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &farmContext{t: t, blobs: a.blobs}
			for p, body := range tc.files {
				c.file(p, 0o644, 1_700_000_000, body)
			}
			spec := &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC, Dockerfile: "Dockerfile", DockerfileInline: []byte(dockerfile),
				Tags: []string{"kiln-test/agent-inline:" + n}, NoCache: true}
			rec, lines := runAssigned(t, a, spec, c.ref())
			t.Cleanup(func() {
				if id := rec.GetResult().GetImageId(); id != "" {
					_, err := docker.ImageRemove(context.Background(), id, image.RemoveOptions{Force: true, PruneChildren: true})
					if err != nil && !cerrdefs.IsNotFound(err) {
						t.Errorf("removing image %s: %v", id, err)
					}
				}
			})
			if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
				t.Fatalf("build %s: %s\nlog:\n%s", rec.State, rec.Error, strings.Join(lines, "\n"))
			}
			if !slices.Contains(lines, n) {
				t.Fatalf("the inline Dockerfile did not run: log lacks %q:\n%s", n, strings.Join(lines, "\n"))
			}
			var got []string
			for _, l := range lines {
				if strings.HasPrefix(l, "ctx: ") {
					got = append(got, l)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("/ctx holds %q, want %q\nlog:\n%s", got, tc.want, strings.Join(lines, "\n"))
			}
		})
	}
}
