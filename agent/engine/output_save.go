package engine

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/kilnbuild/kiln/proto/rules/outputs"
)

// saveImage writes the image imageID as out (docker or oci) to dest, from
// the engine's `docker save` of it. It saves by ID, not by tag, so that a
// later build of the same tag on this engine cannot slip its image in;
// the names go into the tarball as `docker save TAG` and BuildKit's
// exporters write them.
func (d *Docker) saveImage(ctx context.Context, imageID string, out Output, tags []string, dest string) error {
	if imageID == "" {
		return errors.New("the build made no image")
	}
	names, err := imageRefs(out.imageNames(tags))
	if err != nil {
		return err
	}
	rc, err := d.c.ImageSave(ctx, []string{imageID})
	if err != nil {
		return fmt.Errorf("save image %s: %w", imageID, err)
	}
	saved := dest + ".save"
	err = writeFile(saved, rc)
	rc.Close()
	defer os.Remove(saved)
	if err != nil {
		return fmt.Errorf("save image %s: %w", imageID, err)
	}
	if out.Type == outputs.TypeOCI {
		return dockerSaveToOCI(saved, dest, imageID, names)
	}
	return renameDockerSave(saved, dest, names)
}

// imageRefs parses an export's image names, with ":latest" where no tag
// is given.
func imageRefs(names []string) ([]reference.NamedTagged, error) {
	var out []reference.NamedTagged
	for _, n := range names {
		ref, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return nil, &BuildError{Message: fmt.Sprintf("output name %q is not an image reference: %v", n, err)}
		}
		tagged, ok := reference.TagNameOnly(ref).(reference.NamedTagged)
		if !ok {
			return nil, &BuildError{Message: fmt.Sprintf("output name %q names a digest: give it a tag", n)}
		}
		out = append(out, tagged)
	}
	return out, nil
}

func writeFile(name string, r io.Reader) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// saveManifest is one image of a `docker save` tarball's manifest.json.
type saveManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// readSaveManifest reads manifest.json of the `docker save` tarball at
// name, which must hold one image.
func readSaveManifest(name string) (saveManifest, error) {
	var ms []saveManifest
	err := eachEntry(name, func(h *tar.Header, r io.Reader) error {
		if h.Name != "manifest.json" {
			return nil
		}
		return json.NewDecoder(r).Decode(&ms)
	})
	if err != nil {
		return saveManifest{}, err
	}
	if len(ms) != 1 {
		return saveManifest{}, fmt.Errorf("the engine's saved image has %d images in manifest.json, want 1", len(ms))
	}
	return ms[0], nil
}

// eachEntry calls fn with every entry of the tarball at name.
func eachEntry(name string, fn func(*tar.Header, io.Reader) error) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the engine's saved image: %w", err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// renameDockerSave copies the `docker save` tarball saved to dest with
// the image's names in manifest.json's RepoTags and in repositories, as
// `docker save NAME` writes them.
func renameDockerSave(saved, dest string, names []reference.NamedTagged) error {
	m, err := readSaveManifest(saved)
	if err != nil {
		return err
	}
	m.RepoTags = nil
	repos := map[string]map[string]string{}
	for _, n := range names {
		m.RepoTags = append(m.RepoTags, reference.FamiliarString(n))
		if len(m.Layers) > 0 {
			name := reference.FamiliarName(n)
			if repos[name] == nil {
				repos[name] = map[string]string{}
			}
			repos[name][n.Tag()] = layerID(m.Layers[len(m.Layers)-1])
		}
	}
	manifest, err := json.Marshal([]saveManifest{m})
	if err != nil {
		return err
	}
	return writeTar(dest, func(tw *tar.Writer) error {
		err := eachEntry(saved, func(h *tar.Header, r io.Reader) error {
			if h.Name == "manifest.json" || h.Name == "repositories" {
				return nil
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			_, err := io.Copy(tw, r)
			return err
		})
		if err != nil {
			return err
		}
		if err := addFile(tw, "manifest.json", manifest); err != nil {
			return err
		}
		if len(repos) == 0 {
			return nil
		}
		b, err := json.Marshal(repos)
		if err != nil {
			return err
		}
		return addFile(tw, "repositories", b)
	})
}

// layerID is the legacy layer ID of a `docker save` layer path
// ("<id>/layer.tar"), which repositories names.
func layerID(p string) string {
	id, _, _ := strings.Cut(p, "/")
	return id
}

// OCI image layout media types and annotations, as BuildKit's oci exporter
// writes them.
const (
	mediaTypeOCIIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeOCIManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeOCIConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeOCILayer    = "application/vnd.oci.image.layer.v1.tar"
	annotationImageName  = "io.containerd.image.name"
	annotationRefName    = "org.opencontainers.image.ref.name"
)

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// dockerSaveToOCI writes the image of the `docker save` tarball saved to
// dest as an OCI image layout tarball: its config (whose digest is the
// image ID) and its layers as they are (uncompressed tars), an OCI
// manifest naming them and index.json naming the manifest once per name.
func dockerSaveToOCI(saved, dest, imageID string, names []reference.NamedTagged) error {
	m, err := readSaveManifest(saved)
	if err != nil {
		return err
	}
	// The blobs' digests, read first: a tar header comes before its data.
	sums := map[string]ociDescriptor{}
	want := map[string]bool{m.Config: true}
	for _, l := range m.Layers {
		want[l] = true
	}
	err = eachEntry(saved, func(h *tar.Header, r io.Reader) error {
		if !want[h.Name] || h.Typeflag != tar.TypeReg {
			return nil
		}
		hash := sha256.New()
		n, err := io.Copy(hash, r)
		if err != nil {
			return err
		}
		sums[h.Name] = ociDescriptor{Digest: "sha256:" + hex.EncodeToString(hash.Sum(nil)), Size: n}
		return nil
	})
	if err != nil {
		return err
	}
	for p := range want {
		if _, ok := sums[p]; !ok {
			return fmt.Errorf("the engine's saved image lacks %s", p)
		}
	}
	config := sums[m.Config]
	if config.Digest != imageID {
		return fmt.Errorf("the engine saved image %s, not %s", config.Digest, imageID)
	}
	config.MediaType = mediaTypeOCIConfig
	manifest := struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        ociDescriptor   `json:"config"`
		Layers        []ociDescriptor `json:"layers"`
	}{SchemaVersion: 2, MediaType: mediaTypeOCIManifest, Config: config, Layers: []ociDescriptor{}}
	for _, l := range m.Layers {
		d := sums[l]
		d.MediaType = mediaTypeOCILayer
		manifest.Layers = append(manifest.Layers, d)
	}
	mb, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	msum := sha256.Sum256(mb)
	md := ociDescriptor{MediaType: mediaTypeOCIManifest, Digest: "sha256:" + hex.EncodeToString(msum[:]), Size: int64(len(mb))}
	index := struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     []ociDescriptor `json:"manifests"`
	}{SchemaVersion: 2, MediaType: mediaTypeOCIIndex}
	for _, n := range names {
		d := md
		d.Annotations = map[string]string{annotationImageName: n.String(), annotationRefName: n.Tag()}
		index.Manifests = append(index.Manifests, d)
	}
	if len(names) == 0 {
		index.Manifests = []ociDescriptor{md}
	}
	ib, err := json.Marshal(index)
	if err != nil {
		return err
	}
	return writeTar(dest, func(tw *tar.Writer) error {
		if err := addFile(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
			return err
		}
		written := map[string]bool{}
		err := eachEntry(saved, func(h *tar.Header, r io.Reader) error {
			d, ok := sums[h.Name]
			if !ok || !want[h.Name] || written[d.Digest] {
				return nil
			}
			written[d.Digest] = true
			if err := tw.WriteHeader(blobHeader(d.Digest, d.Size)); err != nil {
				return err
			}
			_, err := io.Copy(tw, r)
			return err
		})
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(blobHeader(md.Digest, md.Size)); err != nil {
			return err
		}
		if _, err := tw.Write(mb); err != nil {
			return err
		}
		return addFile(tw, "index.json", ib)
	})
}

func blobHeader(digest string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: "blobs/sha256/" + digest[len("sha256:"):], Size: size, Mode: 0o444, ModTime: time.Unix(0, 0)}
}

func addFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: 0o444, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// writeTar creates the tarball dest with what fn writes; dest is removed
// if fn fails.
func writeTar(dest string, fn func(*tar.Writer) error) error {
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = fn(tw)
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dest)
		return fmt.Errorf("write %s: %w", dest, err)
	}
	return nil
}
