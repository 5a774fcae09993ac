package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// TestIndexWrittenWithTheBuildsOwnCredentials: an agent that takes a
// multi-platform build queued for its image index writes the index under
// its tag on a registry that needs a password, with the password sealed
// into the build (this host's docker config has none), and reports the
// index as the build's result; with a wrong password the build fails
// saying so, and the password is in no error.
func TestIndexWrittenWithTheBuildsOwnCredentials(t *testing.T) {
	const user, password = "kiln", "index-pass-0123456789"
	reg := enginetest.AuthRegistry(t, user, password)
	enginetest.UseDockerConfig(t, nil)
	key, err := seal.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	conn := bustest.Conn(t)
	h, err := agentproto.NewHandler(t.Context(), agentproto.HandlerConfig{Conn: conn, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	hctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(hctx) }()
	t.Cleanup(func() { stop(); <-served })
	a, err := New(t.Context(), Config{
		Name: "index-test", Engine: enginetest.Docker(t), Conn: conn, CacheDir: t.TempDir(), SecretsKey: key,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	// The children's images, pushed as each child would have.
	tag := reg + "/app:1"
	ref, _ := name.ParseReference(tag)
	auth := remote.WithAuth(&authn.Basic{Username: user, Password: password})
	var kids []*kilnv1.ChildResult
	digests := map[string]string{}
	for i, p := range []string{"linux/amd64", "linux/arm64"} {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := img.ConfigFile()
		cfg.OS, cfg.Architecture, _ = strings.Cut(p, "/")
		if img, err = mutate.ConfigFile(img, cfg); err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, auth, remote.WithContext(t.Context())); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		id, _ := img.ConfigName() // a Docker engine's image id
		digests[p] = d.String()
		kids = append(kids, &kilnv1.ChildResult{BuildId: []string{"kid-amd", "kid-arm"}[i], Platform: p,
			Result: &kilnv1.BuildResult{ImageId: id.String(), Steps: 2, CachedSteps: 1, Pushed: []*kilnv1.PushedImage{{Tag: tag, Digest: d.String()}}}})
	}
	parent := func(pass string, annotations ...string) *kilnv1.Build {
		nonce, err := seal.NewNonce()
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := json.Marshal(map[string]string{"username": user, "password": pass})
		sealed, err := seal.Seal(key.PublicKey(), seal.Binding{Tenant: "t", Nonce: nonce, ID: reg}, cred)
		if err != nil {
			t.Fatal(err)
		}
		return &kilnv1.Build{Tenant: "t", Children: []string{"kid-amd", "kid-arm"}, ChildResults: kids,
			Spec: &kilnv1.BuildSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Push: true, Tags: []string{tag}, SealNonce: nonce,
				Annotations:  annotations,
				RegistryAuth: []*kilnv1.SealedSecret{{Id: reg, Sealed: sealed, KeyId: key.KeyID()}}}}
	}
	read := func(t *testing.T) (*v1.IndexManifest, v1.Hash) {
		t.Helper()
		idx, err := remote.Index(ref, auth, remote.WithContext(t.Context()))
		if err != nil {
			t.Fatal(err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		d, _ := idx.Digest()
		return m, d
	}

	t.Run("docker children: a manifest list", func(t *testing.T) {
		rec, evs := runRecord(t, a, parent(password), false)
		if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			t.Fatalf("index build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
		}
		m, d := read(t)
		res := rec.GetResult()
		if res.GetImageId() != d.String() || len(res.GetPushed()) != 1 || res.GetPushed()[0].GetDigest() != d.String() ||
			res.GetDescriptor_().GetDigest() != d.String() || res.GetDescriptor_().GetMediaType() != string(types.DockerManifestList) || res.GetSteps() != 4 {
			t.Fatalf("result %v, want the index %s (a Docker manifest list) under %s and 4 steps", res, d, tag)
		}
		if m.MediaType != types.DockerManifestList || len(m.Manifests) != 2 {
			t.Fatalf("registry holds a %s of %d manifests, want a manifest list of 2", m.MediaType, len(m.Manifests))
		}
		for _, desc := range m.Manifests {
			p := desc.Platform.OS + "/" + desc.Platform.Architecture
			if digests[p] != desc.Digest.String() {
				t.Errorf("index lists %s for %s, want %s", desc.Digest, p, digests[p])
			}
		}
	})

	t.Run("index annotations: an OCI index", func(t *testing.T) {
		rec, evs := runRecord(t, a, parent(password, "index:org.opencontainers.image.title=app", "manifest-descriptor[linux/arm64]:com.example.arch=arm"), false)
		if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			t.Fatalf("index build %s: %s\n%s", rec.State, rec.Error, eventsText(evs))
		}
		m, d := read(t)
		if rec.GetResult().GetImageId() != d.String() || m.MediaType != types.OCIImageIndex || m.Annotations["org.opencontainers.image.title"] != "app" {
			t.Fatalf("registry holds %s, a %s annotated %v; want the result's %s, an OCI index titled app", d, m.MediaType, m.Annotations, rec.GetResult().GetImageId())
		}
		for _, desc := range m.Manifests {
			if want := map[string]string{"arm64": "arm"}[desc.Platform.Architecture]; desc.Annotations["com.example.arch"] != want {
				t.Errorf("%s's descriptor annotated %v, want com.example.arch=%q", desc.Platform.Architecture, desc.Annotations, want)
			}
		}
	})

	t.Run("another platform's image pushed: the build fails", func(t *testing.T) {
		// Two children of the tag on one Docker engine: the arm64 child's
		// push sent the amd64 image the tag named by then.
		b := parent(password)
		raced := proto.CloneOf(kids[1])
		raced.Result.Pushed[0].Digest = digests["linux/amd64"]
		b.ChildResults = []*kilnv1.ChildResult{kids[0], raced}
		rec, _ := runRecord(t, a, b, false)
		if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(rec.Error, "platform linux/arm64 (build kid-arm) pushed "+digests["linux/amd64"]+", an image for linux/amd64") {
			t.Fatalf("index build %s: %q, want failed naming linux/arm64's push of a linux/amd64 image", rec.State, rec.Error)
		}
	})

	t.Run("wrong password: the build fails", func(t *testing.T) {
		wrong := "not-" + password
		rec, evs := runRecord(t, a, parent(wrong), false)
		if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(rec.Error, "the image index could not be written") {
			t.Fatalf("index build %s: %q, want failed saying the index could not be written", rec.State, rec.Error)
		}
		if strings.Contains(rec.Error, wrong) || strings.Contains(eventsText(evs), wrong) {
			t.Fatalf("the password shows in the build's error or log: %q", rec.Error)
		}
	})
}
