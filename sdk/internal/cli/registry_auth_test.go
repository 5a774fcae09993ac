package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

func TestRegistryHosts(t *testing.T) {
	tests := []struct {
		name       string
		spec       *kilnv1.BuildSpec
		dockerfile string
		want       []string
	}{
		{name: "tags without push need nothing", spec: &kilnv1.BuildSpec{Tags: []string{"ghcr.io/a/b:1"}}, want: []string{}},
		{name: "tags with push", spec: &kilnv1.BuildSpec{Push: true, Tags: []string{"ghcr.io/a/b:1", "127.0.0.1:5000/x:2", "alpine:3"}},
			want: []string{"127.0.0.1:5000", "docker.io", "ghcr.io"}},
		{name: "base images", spec: &kilnv1.BuildSpec{}, dockerfile: "# syntax=x\nFROM --platform=$BUILDPLATFORM Registry.Example.com:443/base/go:1 AS build\nRUN x\nfrom build AS test\nFROM scratch\nFROM ${BASE}\nFROM quay.io/q/r@sha256:abc\nFROM busybox\n",
			want: []string{"docker.io", "quay.io", "registry.example.com:443"}},
		{name: "a stage named like an image", spec: &kilnv1.BuildSpec{}, dockerfile: "FROM ghcr.io/x/y AS node\nFROM node\n", want: []string{"ghcr.io"}},
		{name: "no FROM", spec: &kilnv1.BuildSpec{}, dockerfile: "RUN echo FROM ghcr.io/no\n", want: []string{}},
		{name: "cache refs, pushed or not", spec: &kilnv1.BuildSpec{
			CacheFrom: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "cache.example.com/app:c"}}, {Type: "registry", Attrs: map[string]string{"ref": "team/app:c"}}},
			CacheTo:   []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "127.0.0.1:5000/app:c"}}, {Type: "inline"}},
		}, want: []string{"127.0.0.1:5000", "cache.example.com", "docker.io"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := registryHosts(tt.spec, []byte(tt.dockerfile)); !slices.Equal(got, tt.want) {
				t.Fatalf("registryHosts = %q, want %q", got, tt.want)
			}
		})
	}
}

// writeDockerConfig writes config.json into a new DOCKER_CONFIG dir.
func writeDockerConfig(t *testing.T, config string) func(string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(k string) (string, bool) {
		if k == "DOCKER_CONFIG" {
			return dir, true
		}
		return "", false
	}
}

func TestLookupRegistryCredentials(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	// helper answers as docker-credential-<name> get would.
	helper := func(_ context.Context, name, server string) ([]byte, error) {
		switch {
		case name == "store" && server == "https://index.docker.io/v1/":
			return []byte(`{"ServerURL":"https://index.docker.io/v1/","Username":"hubuser","Secret":"hubpass"}`), nil
		case name == "gcr" && server == "gcr.io":
			return []byte(`{"ServerURL":"gcr.io","Username":"<token>","Secret":"refresh-token"}`), nil
		case name == "broken":
			return nil, errors.New("exit status 1: the keychain is locked")
		}
		return nil, errors.New("exit status 1: credentials not found in native keychain")
	}
	hosts := []string{"127.0.0.1:5000", "docker.io", "gcr.io", "ghcr.io"}
	tests := []struct {
		name    string
		config  string
		want    map[string]kiln.RegistryCredential
		wantErr string
	}{
		{name: "auths", config: `{"auths":{"127.0.0.1:5000":{"auth":"` + b64("u:p:with:colons") + `"},"https://index.docker.io/v1/":{"username":"hub","password":"pw"},"other.io":{"auth":"` + b64("x:y") + `"}}}`,
			want: map[string]kiln.RegistryCredential{"127.0.0.1:5000": {Username: "u", Password: "p:with:colons"}, "docker.io": {Username: "hub", Password: "pw"}}},
		{name: "identity token", config: `{"auths":{"ghcr.io":{"identitytoken":"tok"}}}`,
			want: map[string]kiln.RegistryCredential{"ghcr.io": {IdentityToken: "tok"}}},
		{name: "credential store and helpers before auths", config: `{"auths":{"docker.io":{"auth":"` + b64("old:old") + `"}},"credsStore":"store","credHelpers":{"gcr.io":"gcr"}}`,
			want: map[string]kiln.RegistryCredential{"docker.io": {Username: "hubuser", Password: "hubpass"}, "gcr.io": {IdentityToken: "refresh-token"}}},
		{name: "empty config", config: `{}`, want: map[string]kiln.RegistryCredential{}},
		{name: "not JSON", config: `{"auths":`, wantErr: "is not a docker config file"},
		{name: "auth that does not decode", config: `{"auths":{"ghcr.io":{"auth":"bm9jb2xvbg=="}}}`, wantErr: "auth entry for ghcr.io"},
		{name: "a failing helper", config: `{"credHelpers":{"ghcr.io":"broken"}}`, wantErr: "docker-credential-broken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lookupRegistryCredentials(t.Context(), hosts, writeDockerConfig(t, tt.config), helper)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one with %q", err, tt.wantErr)
				}
				for _, secret := range []string{"nocolon", "p:with"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("the error shows a credential: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("credentials = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("no config file", func(t *testing.T) {
		got, err := lookupRegistryCredentials(t.Context(), hosts, func(k string) (string, bool) {
			if k == "DOCKER_CONFIG" {
				return t.TempDir(), true
			}
			return "", false
		}, helper)
		if err != nil || len(got) != 0 {
			t.Fatalf("= %v, %v; want nothing", got, err)
		}
	})
}

// A real helper program, run as the docker CLI runs one.
func TestRunCredentialHelper(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 2\nif [ \"$server\" = ghcr.io ]; then echo '{\"ServerURL\":\"ghcr.io\",\"Username\":\"me\",\"Secret\":\"s3\"}'; else echo 'credentials not found in native keychain'; exit 1; fi\n"
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-kilntest"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	lookup := writeDockerConfig(t, `{"credsStore":"kilntest"}`)
	got, err := lookupRegistryCredentials(t.Context(), []string{"ghcr.io", "quay.io"}, lookup, runCredentialHelper)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]kiln.RegistryCredential{"ghcr.io": {Username: "me", Password: "s3"}}
	if !maps.Equal(got, want) {
		t.Fatalf("credentials = %v, want %v", got, want)
	}
	got, err = lookupRegistryCredentials(t.Context(), []string{"ghcr.io"}, writeDockerConfig(t, `{"credsStore":"missing-helper"}`), runCredentialHelper)
	if err != nil || len(got) != 0 {
		t.Fatalf("a helper that is not installed gave %v, %v; want no credentials and no error", got, err)
	}
}

func FuzzRegistryHosts(f *testing.F) {
	f.Add("FROM ghcr.io/a/b AS x\nFROM x\nFROM [::1]:5000/y@sha256:00\n", "127.0.0.1:5000/t:1")
	f.Add("from --platform=linux Registry.IO/z\n", "alpine")
	f.Fuzz(func(t *testing.T, dockerfile, tag string) {
		hosts := registryHosts(&kilnv1.BuildSpec{Push: true, Tags: []string{tag}}, []byte(dockerfile))
		if !slices.IsSorted(hosts) || len(slices.Compact(slices.Clone(hosts))) != len(hosts) {
			t.Fatalf("hosts not sorted and unique: %q", hosts)
		}
		for _, h := range hosts {
			if h == "" || h != strings.ToLower(h) || strings.ContainsAny(h, "/@ \t") {
				t.Fatalf("host %q is not a registry host", h)
			}
		}
	})
}
