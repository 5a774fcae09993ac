package engine_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// exporter is an engine that builds and exports outputs.
type exporter interface {
	BuildKit(ctx context.Context, o engine.BuildKitOptions, r engine.Reporter) (engine.BuildKitResult, error)
	ExportOutput(ctx context.Context, o engine.BuildKitOptions, res engine.Result, r engine.Reporter) error
}

func TestDockerExportsOutputs(t *testing.T) {
	t.Parallel()
	d := enginetest.Docker(t)
	c := enginetest.APIClient(t)
	var id string
	removeImages(t, c, &id)
	testExportsOutputs(t, d, &id)
}

func TestBuildKitdExportsOutputs(t *testing.T) {
	t.Parallel()
	var id string
	testExportsOutputs(t, startBuildKitd(t), &id)
}

// testExportsOutputs builds a small filesystem on e and exports it as
// each output type: local holds the files the Dockerfile wrote, with their
// modes, symlink and hard link; tar the same as a tarball, with their
// owners in the image; oci is an OCI layout naming the image;
// docker is a `docker save` tarball with the tag.
func testExportsOutputs(t *testing.T, e exporter, imageID *string) {
	base := enginetest.BusyboxBase(t)
	n := nonce()
	dir := t.TempDir()
	writeDir(t, dir, map[string]string{
		"Dockerfile": fmt.Sprintf(`FROM %[1]s AS build
RUN mkdir -p /out/sub && echo hello-%[2]s > /out/hello.txt && chmod 0640 /out/hello.txt && \
    ln -s hello.txt /out/link && ln /out/hello.txt /out/hard && \
    printf '#!/bin/sh\n' > /out/sub/run.sh && chmod 0755 /out/sub/run.sh && chown 1000:2000 /out/sub/run.sh
FROM scratch
COPY --from=build /out/ /
`, base, n),
	})
	tag := "kiln-test/output:" + n
	o := engine.BuildKitOptions{
		BuildOptions: engine.BuildOptions{Tags: []string{tag}},
		ContextDir:   dir,
		SharedKey:    "kiln-test-" + n,
	}
	var r recorder
	res, err := e.BuildKit(t.Context(), o, &r)
	if err != nil {
		t.Fatalf("build: %v\nlog:\n%s", err, strings.Join(r.logs, "\n"))
	}
	*imageID = res.ImageID
	export := func(t *testing.T, typ string) string {
		t.Helper()
		o := o
		o.Output = &engine.Output{Type: typ}
		o.OutputDir = t.TempDir()
		var r recorder
		if err := e.ExportOutput(t.Context(), o, res.Result, &r); err != nil {
			t.Fatalf("export type=%s: %v\nlog:\n%s", typ, err, strings.Join(r.logs, "\n"))
		}
		if len(r.started) != 0 {
			t.Errorf("the export reported steps: %q", r.started)
		}
		return o.OutputDir
	}

	hello := fmt.Sprintf("file 0640 %q", "hello-"+n+"\n")
	want := map[string]string{
		"hello.txt":  hello,
		"hard":       hello,
		"link":       "symlink hello.txt",
		"sub":        "dir 0755",
		"sub/run.sh": fmt.Sprintf("file 0755 %q", "#!/bin/sh\n"),
	}
	t.Run("local", func(t *testing.T) {
		out := export(t, "local")
		got := map[string]string{}
		err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == out {
				return err
			}
			rel, _ := filepath.Rel(out, p)
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				got[rel] = "symlink " + target
				return err
			case fi.IsDir():
				got[rel] = fmt.Sprintf("dir %#o", fi.Mode().Perm())
			default:
				b, err := os.ReadFile(p)
				got[rel] = fmt.Sprintf("file %#o %q", fi.Mode().Perm(), b)
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("exported files:\n%v\nwant:\n%v", got, want)
		}
		a, _ := os.Stat(filepath.Join(out, "hello.txt"))
		b, _ := os.Stat(filepath.Join(out, "hard"))
		if !os.SameFile(a, b) {
			t.Errorf("hard and hello.txt are not one file: the hard link was lost")
		}
	})
	t.Run("tar", func(t *testing.T) {
		f, err := os.Open(filepath.Join(export(t, "tar"), engine.OutputTarFile))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := map[string]string{}
		links := map[string]string{}
		owners := map[string]string{}
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := strings.TrimSuffix(h.Name, "/")
			owners[name] = fmt.Sprintf("%d:%d", h.Uid, h.Gid)
			switch h.Typeflag {
			case tar.TypeSymlink:
				got[name] = "symlink " + h.Linkname
			case tar.TypeDir:
				got[name] = fmt.Sprintf("dir %#o", h.Mode&0o7777)
			case tar.TypeLink:
				links[name] = h.Linkname
			default:
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				got[name] = fmt.Sprintf("file %#o %q", h.Mode&0o7777, b)
			}
		}
		for l, target := range links {
			got[l] = got[target]
		}
		if !maps.Equal(got, want) || len(links) != 1 {
			t.Fatalf("tar entries:\n%v (hard links %v)\nwant:\n%v", got, links, want)
		}
		if owners["sub/run.sh"] != "1000:2000" || owners["hello.txt"] != "0:0" {
			t.Fatalf("tar owners %v: want sub/run.sh 1000:2000 and the rest root's", owners)
		}
	})
	t.Run("oci", func(t *testing.T) {
		files := tarFiles(t, filepath.Join(export(t, "oci"), engine.OutputImageFile))
		var index struct {
			Manifests []struct {
				MediaType   string
				Digest      string
				Annotations map[string]string
			}
		}
		if err := json.Unmarshal(files["index.json"], &index); err != nil {
			t.Fatalf("index.json: %v (files %v)", err, keys(files))
		}
		if _, ok := files["oci-layout"]; !ok || len(index.Manifests) == 0 {
			t.Fatalf("not an OCI layout: files %v, index %s", keys(files), files["index.json"])
		}
		m := index.Manifests[0]
		if m.Annotations["io.containerd.image.name"] != "docker.io/"+tag || m.Annotations["org.opencontainers.image.ref.name"] != n {
			t.Errorf("index names the image %v, want %s", m.Annotations, tag)
		}
		var manifest struct {
			Config struct{ Digest string }
			Layers []struct{ MediaType, Digest string }
		}
		if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(m.Digest, "sha256:")], &manifest); err != nil {
			t.Fatalf("manifest %s: %v", m.Digest, err)
		}
		if manifest.Config.Digest != res.ImageID || len(manifest.Layers) != 1 {
			t.Fatalf("manifest %+v: want config %s and one layer", manifest, res.ImageID)
		}
		if _, ok := files["blobs/sha256/"+strings.TrimPrefix(manifest.Layers[0].Digest, "sha256:")]; !ok {
			t.Fatalf("the layer %s is not in the layout: %v", manifest.Layers[0].Digest, keys(files))
		}
	})
	t.Run("docker", func(t *testing.T) {
		files := tarFiles(t, filepath.Join(export(t, "docker"), engine.OutputImageFile))
		var manifest []struct {
			Config   string
			RepoTags []string
			Layers   []string
		}
		if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
			t.Fatalf("manifest.json: %v (files %v)", err, keys(files))
		}
		if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{tag}) || len(manifest[0].Layers) != 1 {
			t.Fatalf("manifest.json %s: want one image tagged %s with one layer", files["manifest.json"], tag)
		}
		if _, ok := files[manifest[0].Config]; !ok {
			t.Fatalf("the config %s is not in the tarball: %v", manifest[0].Config, keys(files))
		}
	})
}

// tarFiles reads the regular files of the tarball at name.
func tarFiles(t *testing.T, name string) map[string][]byte {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(h.Name, "./")] = b
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
