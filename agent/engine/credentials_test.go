package engine

import "testing"

// TestCredentialsLookup: a build's credentials are found by the registry
// a pull or push reaches, however the address is spelt; Docker Hub's also
// for an address without a registry, as the CLI keys them.
func TestCredentialsLookup(t *testing.T) {
	c := Credentials{"docker.io": {Username: "hub"}, "ghcr.io": {Username: "gh"}, "127.0.0.1:5000": {Username: "local"}}
	for address, want := range map[string]string{
		"": "hub", "docker.io": "hub", "https://index.docker.io/v1/": "hub", "registry-1.docker.io": "hub",
		"GHCR.io": "gh", "https://ghcr.io/v2/": "gh", "127.0.0.1:5000": "local", "quay.io": "",
	} {
		ac, ok := c.lookup(address)
		if ac.Username != want || ok != (want != "") {
			t.Errorf("lookup(%q) = %q, %v; want %q", address, ac.Username, ok, want)
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
