package enginetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/kilnbuild/kiln/agent/engine"
)

const (
	// BusyboxRepo and BusyboxTag name the base image BusyboxBase provides,
	// under the test registry.
	BusyboxRepo = "kiln-test/busybox"
	BusyboxTag  = "1"

	busyboxPath    = "/bin/busybox" // Debian's busybox-static
	busyboxTimeout = 2 * time.Minute
)

var busybox struct {
	once sync.Once
	ref  string
	err  error
}

// BusyboxBase makes sure the engine and the test registry both hold a base
// image made of the static busybox at /bin/busybox (every applet linked in
// /bin, /etc/passwd with root, /tmp), and returns its reference in the
// registry, e.g. "127.0.0.1:5000/kiln-test/busybox:1", for Dockerfiles to
// build FROM, with or without --pull.
//
// The image is built in Go as a `docker save` archive with a fixed date, so
// its ID depends only on the busybox binary: every process and machine makes
// the same image, and test processes that race to make it agree. Once per
// process it checks the engine and the registry and loads or pushes only
// what is missing.
func BusyboxBase(t testing.TB) string {
	t.Helper()
	d := Docker(t)
	c := APIClient(t)
	reg := Registry(t)
	busybox.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), busyboxTimeout)
		defer cancel()
		busybox.ref, busybox.err = ensureBusybox(ctx, d, c, reg)
	})
	if busybox.err != nil {
		t.Fatalf("enginetest: busybox base image: %v", busybox.err)
	}
	return busybox.ref
}

func ensureBusybox(ctx context.Context, d *engine.Docker, c *client.Client, reg string) (string, error) {
	ref := reg + "/" + BusyboxRepo + ":" + BusyboxTag
	archive, imageID, err := busyboxArchive(ref)
	if err != nil {
		return "", err
	}
	if inspect, err := c.ImageInspect(ctx, ref); err != nil || inspect.ID != imageID {
		if err := loadImage(ctx, c, archive); err != nil {
			return "", err
		}
		inspect, err := c.ImageInspect(ctx, ref)
		if err != nil {
			return "", fmt.Errorf("inspect %s after loading it: %w", ref, err)
		}
		if inspect.ID != imageID {
			return "", fmt.Errorf("loaded %s as %s, want %s", ref, inspect.ID, imageID)
		}
	}
	m, err := fetchManifest(ctx, reg, BusyboxRepo, BusyboxTag)
	if err != nil {
		return "", err
	}
	if !m.found || m.configDigest != imageID {
		if _, _, err := d.Push(ctx, ref, nil, nil); err != nil {
			return "", err
		}
	}
	return ref, nil
}

func loadImage(ctx context.Context, c *client.Client, archive []byte) error {
	resp, err := c.ImageLoad(ctx, bytes.NewReader(archive), client.ImageLoadWithQuiet(true))
	if err != nil {
		return fmt.Errorf("docker load: %w", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			return fmt.Errorf("docker load: %w", err)
		}
		if m.Error != nil {
			return fmt.Errorf("docker load: %s", m.Error.Message)
		}
	}
	return nil
}

// busyboxArchive returns the base image as a `docker save` archive tagged
// ref, and its image ID.
func busyboxArchive(ref string) (archive []byte, imageID string, err error) {
	layer, err := busyboxLayer()
	if err != nil {
		return nil, "", err
	}
	layerSum := sha256.Sum256(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      epoch,
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd": []string{"sh"},
		},
		"rootfs": map[string]any{
			"type":     "layers",
			"diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])},
		},
		"history": []map[string]any{{"created": epoch, "created_by": "kiln enginetest: static busybox from " + busyboxPath}},
	})
	if err != nil {
		return nil, "", err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{ref},
		"Layers":   []string{layerName},
	}})
	if err != nil {
		return nil, "", err
	}
	archive, err = writeTar([]*tar.Header{
		{Typeflag: tar.TypeReg, Name: configName, Mode: 0o644},
		{Typeflag: tar.TypeDir, Name: hex.EncodeToString(layerSum[:]) + "/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: layerName, Mode: 0o644},
		{Typeflag: tar.TypeReg, Name: "manifest.json", Mode: 0o644},
	}, map[string][]byte{configName: config, layerName: layer, "manifest.json": manifest})
	if err != nil {
		return nil, "", err
	}
	return archive, "sha256:" + hex.EncodeToString(configSum[:]), nil
}

// busyboxLayer returns the image's only layer: /bin/busybox, a symlink in
// /bin for each of its applets, root's /etc/passwd and /etc/group, and /tmp.
func busyboxLayer() ([]byte, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("%w (install Debian's busybox-static, or run `make dev-env`)", err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxPath, err)
	}
	entries := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755},
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		entries = append(entries, &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777})
	}
	entries = append(entries,
		&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		&tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644},
		&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644},
		&tar.Header{Typeflag: tar.TypeDir, Name: "root/", Mode: 0o700},
		&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777},
	)
	return writeTar(entries, map[string][]byte{
		"bin/busybox": bin,
		"etc/group":   []byte("root:x:0:\n"),
		"etc/passwd":  []byte("root:x:0:0:root:/root:/bin/sh\n"),
	})
}
