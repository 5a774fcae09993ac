package engine_test

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// buildTagged builds a small image unique to the test, tagged with tags, and
// removes it when the test ends.
func buildTagged(t *testing.T, tags ...string) engine.Result {
	t.Helper()
	base := enginetest.BusyboxBase(t)
	d := enginetest.Docker(t)
	n := nonce()
	res, err := d.Build(t.Context(), enginetest.ContextTar(t, map[string]string{
		"Dockerfile": fmt.Sprintf("FROM %s\nRUN echo %s > /nonce\n", base, n),
	}), engine.BuildOptions{Tags: tags}, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	removeImages(t, enginetest.APIClient(t), &res.ImageID)
	return res
}

func TestPush(t *testing.T) {
	d := enginetest.Docker(t)
	reg := enginetest.Registry(t)
	n := nonce()
	repo := "kiln-test/engine-push"
	tag := reg + "/" + repo + ":" + n
	buildTagged(t, tag)
	enginetest.UseDockerConfig(t, nil)

	var lines []string
	digest, size, err := d.Push(t.Context(), tag, nil, func(line string) { lines = append(lines, line) })
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	t.Logf("pushed %s: %s (%d bytes)\n%s", tag, digest, size, strings.Join(lines, "\n"))
	if want := enginetest.ManifestDigest(t, reg, repo, n); digest != want {
		t.Fatalf("Push returned %s, the registry has %s", digest, want)
	}
	if size <= 0 {
		t.Fatalf("Push returned size %d", size)
	}
	if want := "The push refers to repository [" + reg + "/" + repo + "]"; !slices.Contains(lines, want) {
		t.Fatalf("log misses %q", want)
	}
}

func TestPushWithCredentials(t *testing.T) {
	d := enginetest.Docker(t)
	const user, password = "kiln", "pw-that-must-not-leak-7d1c"
	reg := enginetest.AuthRegistry(t, user, password)
	repo := "kiln-test/engine-push-auth"
	n := nonce()
	tag := reg + "/" + repo + ":" + n
	buildTagged(t, tag)
	secrets := []string{password, base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
	assertNoSecret := func(t *testing.T, what string, texts ...string) {
		t.Helper()
		for _, text := range texts {
			for _, s := range secrets {
				if strings.Contains(text, s) {
					t.Fatalf("%s shows the credentials: %q", what, text)
				}
			}
		}
	}

	tests := []struct {
		name      string
		auths     map[string][2]string
		creds     engine.Credentials // the build's own
		wantError string             // "" means the push succeeds
	}{
		{name: "no credentials", wantError: "no basic auth credentials"},
		{name: "wrong password", auths: map[string][2]string{reg: {user, password + "-wrong"}}, wantError: "unauthorized"},
		{name: "credentials for another registry", auths: map[string][2]string{"127.0.0.1:1": {user, password}}, wantError: "no basic auth credentials"},
		{name: "right credentials", auths: map[string][2]string{reg: {user, password}}},
		{name: "the build's credentials, none on the host", creds: engine.Credentials{reg: {Username: user, Password: password}}},
		{name: "the build's credentials come first", auths: map[string][2]string{reg: {user, password + "-wrong"}},
			creds: engine.Credentials{reg: {Username: user, Password: password}}},
		{name: "the build's wrong credentials come first too", auths: map[string][2]string{reg: {user, password}},
			creds: engine.Credentials{reg: {Username: user, Password: password + "-wrong"}}, wantError: "unauthorized"},
		{name: "the build's credentials for another registry", creds: engine.Credentials{"127.0.0.1:1": {Username: user, Password: password}},
			wantError: "no basic auth credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enginetest.UseDockerConfig(t, tt.auths)
			var lines []string
			digest, _, err := d.Push(t.Context(), tag, tt.creds, func(line string) { lines = append(lines, line) })
			assertNoSecret(t, "a log line", lines...)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("Push: %v, want an error with %q", err, tt.wantError)
				}
				assertNoSecret(t, "the error", err.Error())
				t.Logf("Push: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Push: %v", err)
			}
			if want := manifestDigestAs(t, user, password, reg, repo, n); digest != want {
				t.Fatalf("Push returned %s, the registry has %s", digest, want)
			}
		})
	}
}

// manifestDigestAs reads the digest of repo:tag from a registry that wants
// basic auth.
func manifestDigestAs(t *testing.T, user, password, reg, repo, tag string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodHead, "http://"+reg+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s: %s", req.URL, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

func TestPushFailure(t *testing.T) {
	d := enginetest.Docker(t)
	enginetest.UseDockerConfig(t, map[string][2]string{"127.0.0.1:1": {"kiln", "pw-that-must-not-leak-4b2e"}})
	tests := []struct {
		name      string
		tag       string
		wantError string
	}{
		{name: "no such image", tag: "127.0.0.1:1/kiln-test/absent:" + nonce(), wantError: "does not exist locally"},
		{name: "digest instead of tag", tag: "127.0.0.1:1/kiln-test/absent@sha256:" + strings.Repeat("0", 64), wantError: "only a tag"},
		{name: "not a reference", tag: "Not/A/Reference", wantError: "must be lowercase"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := d.Push(t.Context(), tt.tag, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantError) {
				t.Fatalf("Push(%q): %v, want an error with %q", tt.tag, err, tt.wantError)
			}
			if strings.Contains(err.Error(), "pw-that-must-not-leak") {
				t.Fatalf("the error shows the password: %v", err)
			}
			t.Logf("Push: %v", err)
		})
	}

	t.Run("registry that does not answer", func(t *testing.T) {
		tag := "127.0.0.1:1/kiln-test/engine-push-nowhere:" + nonce()
		buildTagged(t, tag)
		_, _, err := d.Push(t.Context(), tag, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("Push: %v, want connection refused", err)
		}
		if strings.Contains(err.Error(), "pw-that-must-not-leak") {
			t.Fatalf("the error shows the password: %v", err)
		}
	})
}
