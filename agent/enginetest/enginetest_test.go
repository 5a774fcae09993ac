package enginetest_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

func TestBusyboxBase(t *testing.T) {
	ref := enginetest.BusyboxBase(t)
	reg := enginetest.Registry(t)
	if want := reg + "/" + enginetest.BusyboxRepo + ":" + enginetest.BusyboxTag; ref != want {
		t.Fatalf("BusyboxBase = %q, want %q", ref, want)
	}
	if again := enginetest.BusyboxBase(t); again != ref {
		t.Fatalf("second BusyboxBase = %q, want %q", again, ref)
	}
	if d := enginetest.ManifestDigest(t, reg, enginetest.BusyboxRepo, enginetest.BusyboxTag); !strings.HasPrefix(d, "sha256:") {
		t.Fatalf("ManifestDigest = %q, want sha256:…", d)
	}

	// The image runs: a shell, the applets and root's passwd entry are there.
	c := enginetest.APIClient(t)
	ctx := t.Context()
	created, err := c.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"sh", "-c", "id -un && ls /tmp && echo ok"}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
	})
	waitc, errc := c.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := c.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-waitc:
		if res.StatusCode != 0 {
			t.Fatalf("container exited %d", res.StatusCode)
		}
	case err := <-errc:
		t.Fatal(err)
	}
}

func TestContextTar(t *testing.T) {
	files := map[string]string{
		"Dockerfile":      "FROM scratch\n",
		"src/app/main.sh": "#!/bin/sh\necho hi\n",
		"src/readme":      "hello",
	}
	tr := tar.NewReader(enginetest.ContextTar(t, files))
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Typeflag != tar.TypeReg {
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if string(body) != files[h.Name] {
			t.Errorf("%s = %q, want %q", h.Name, body, files[h.Name])
		}
		if wantExec := strings.HasSuffix(h.Name, ".sh"); (h.Mode&0o111 != 0) != wantExec {
			t.Errorf("%s mode %o", h.Name, h.Mode)
		}
	}
	want := []string{"Dockerfile", "src/", "src/app/", "src/app/main.sh", "src/readme"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
}
