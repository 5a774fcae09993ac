package engine

import "testing"

func TestRegistryHost(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io": "docker.io", "https://index.docker.io/v1/": "docker.io", "registry-1.docker.io": "docker.io",
		"index.docker.io": "docker.io", "GHCR.io": "ghcr.io", "127.0.0.1:5000": "127.0.0.1:5000", "https://ghcr.io/v2/": "ghcr.io",
	} {
		if got := registryHost(in); got != want {
			t.Errorf("registryHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestClassicAuthConfigsKeyDockerHubAsTheCLIDoes(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no host credentials
	got := Credentials{"docker.io": {Username: "u"}, "ghcr.io": {Username: "g"}}.classicAuthConfigs()
	if len(got) != 2 || got[dockerHubAuthKey].Username != "u" || got["ghcr.io"].Username != "g" || got["ghcr.io"].ServerAddress != "ghcr.io" {
		t.Fatalf("classicAuthConfigs = %v", got)
	}
}
