package cli

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestRunFlags: --network, --add-host, --shm-size and --ulimit land in the
// spec as proto/rules/buildflags reads them, and bad values are usage
// errors naming the flag.
func TestRunFlags(t *testing.T) {
	dir := contextDir(t)
	o, err := parseBuildArgs([]string{"--network", "none", "--add-host", "db:10.0.0.5", "--add-host", "v6=[::1]",
		"--shm-size", "128m", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=10", "--ulimit", "nofile=5", dir}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := &kilnv1.BuildSpec{Network: "none", ExtraHosts: []string{"db:10.0.0.5", "v6:::1"}, ShmSizeBytes: 128 << 20,
		Ulimits: []*kilnv1.Ulimit{{Name: "nofile", Soft: 5, Hard: 5}, {Name: "nproc", Soft: 10, Hard: 10}}}
	got := &kilnv1.BuildSpec{Network: o.spec.Network, ExtraHosts: o.spec.ExtraHosts, ShmSizeBytes: o.spec.ShmSizeBytes, Ulimits: o.spec.Ulimits}
	if !proto.Equal(got, want) {
		t.Errorf("spec %v, want %v", got, want)
	}
	if o, err := parseBuildArgs([]string{"--network", "default", dir}, envOf(nil)); err != nil || o.spec.Network != "" {
		t.Errorf("--network default: %v, %q", err, o.spec.GetNetwork())
	}
	for _, bad := range [][]string{
		{"--network", "bridge"}, {"--add-host", "db"}, {"--add-host", "db:host-gateway"}, {"--shm-size", "12x"},
		{"--ulimit", "nofile=9:1"}, {"--ulimit", "bogus=1"},
	} {
		_, err := parseBuildArgs(append(bad, dir), envOf(nil))
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: %v (exit %d), want a usage error naming %s", bad, err, ExitCode(err), bad[0])
		}
	}
}

// TestBuildxFlags: every docker buildx build flag a pipeline passes is
// recognised — honoured, accepted as what kiln does anyway, or refused
// with exit 2 and a message saying why — never "unknown flag".
func TestBuildxFlags(t *testing.T) {
	dir := contextDir(t)
	tests := []struct {
		args []string
		// refused is a substring of the usage error; "" means accepted.
		refused string
		push    bool
	}{
		{args: []string{"--load"}, refused: "a CI job has no engine"},
		{args: []string{"--output", "type=docker"}, refused: "type=docker,dest=- | docker load"},
		{args: []string{"-t", "r/a:1", "--output", "type=registry"}, push: true},
		{args: []string{"-t", "r/a:1", "--output", "type=image,push=true"}, push: true},
		{args: []string{"--output", "type=registry"}, refused: "--push needs at least one --tag"},
		{args: []string{"-t", "r/a:1", "--output", "type=registry,name=r/b:2"}, refused: "name the image with --tag"},
		{args: []string{"--platform", "linux/arm64,linux/amd64"}},
		{args: []string{"--platform", "linux/sparc"}, refused: "--platform: platform \"linux/sparc\": unknown architecture"},
		{args: []string{"--ssh", "default"}, refused: "$SSH_AUTH_SOCK is not set"},
		{args: []string{"--annotation", "a=b"}},
		{args: []string{"--annotation", "layer:a=b"}, refused: `--annotation: annotation "layer:a=b": unknown type "layer"`},
		{args: []string{"--provenance=false", "--sbom=false"}},
		{args: []string{"--provenance=mode=max"}, refused: "add --push"},
		{args: []string{"-t", "r/a:1", "--push", "--provenance=mode=max", "--sbom"}, push: true},
		{args: []string{"--sbom=true"}, refused: "add --push"},
		{args: []string{"--attest", "type=provenance,disabled=true"}},
		{args: []string{"--attest", "type=sbom"}, refused: "add --push"},
		{args: []string{"--call", "build"}},
		{args: []string{"--call", "check"}},
		{args: []string{"--check"}},
		{args: []string{"--call", "print"}, refused: "want build, check, outline or targets"},
		{args: []string{"--allow", "network.host"}},
		{args: []string{"--allow", "device"}, refused: "--allow device"},
		{args: []string{"--cgroup-parent", "x"}, refused: "cgroups"},
		{args: []string{"--no-cache-filter", "a"}, refused: "use --no-cache"},
		{args: []string{"--rm", "--force-rm", "--compress"}},
		{args: []string{"--squash"}, refused: "multi-stage"},
		{args: []string{"-m", "1g"}, refused: "--memory is not supported"},
		{args: []string{"--cpu-shares", "2"}, refused: "--cpu-shares"},
		{args: []string{"--security-opt", "seccomp=unconfined"}, refused: "allow_insecure"},
	}
	for _, tt := range tests {
		o, err := parseBuildArgs(append(tt.args, dir), envOf(nil))
		if tt.refused == "" {
			if err != nil {
				t.Errorf("%v: %v, want accepted", tt.args, err)
			} else if o.spec.Push != tt.push {
				t.Errorf("%v: push %v, want %v", tt.args, o.spec.Push, tt.push)
			}
			continue
		}
		if err == nil || ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.refused) || strings.Contains(err.Error(), "unknown flag") {
			t.Errorf("%v: %v (exit %d), want exit %d saying %q", tt.args, err, ExitCode(err), ExitUsage, tt.refused)
		}
	}
	o, err := parseBuildArgs([]string{"--allow", "network.host", dir}, envOf(nil))
	if err != nil || len(o.warnings) != 1 || !strings.Contains(o.warnings[0], "allow_network_host") {
		t.Errorf("--allow: %v, warnings %q", err, o.warnings)
	}
	// The buildx-only flags stay out of kiln build's usage.
	var f buildFlags
	usage := newBuildFlagSet(&f).FlagUsages()
	if strings.Contains(usage, "--load") || !strings.Contains(usage, "--network") {
		t.Errorf("usage lists --load or lacks --network:\n%s", usage)
	}
}
