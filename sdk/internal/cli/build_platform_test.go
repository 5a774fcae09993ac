package cli

import (
	"slices"
	"testing"
)

// --platform takes buildx's comma lists, repeated, and normalises them.
func TestPlatformFlag(t *testing.T) {
	dir := contextDir(t)
	o, err := parseBuildArgs([]string{"--platform", "linux/amd64,linux/aarch64", "--platform", "linux/arm64", dir}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(o.spec.Platforms, want) {
		t.Fatalf("platforms %v, want %v", o.spec.Platforms, want)
	}
	if o, err = parseBuildArgs([]string{dir}, envOf(nil)); err != nil || len(o.spec.Platforms) != 0 {
		t.Fatalf("no --platform: %v, %v", o.spec.Platforms, err)
	}
	if _, err := parseBuildArgs([]string{"--platform", "windows/amd64", dir}, envOf(nil)); err == nil || ExitCode(err) != ExitUsage {
		t.Fatalf("windows/amd64: %v, want a usage error", err)
	}
}
