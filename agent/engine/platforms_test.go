package engine

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// BinfmtPlatforms lists the platforms of enabled qemu handlers only.
func TestBinfmtPlatforms(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"qemu-aarch64": "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n",
		"qemu-arm":     "disabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\n",
		"python3.11":   "enabled\ninterpreter /usr/bin/python3.11\n",
		"status":       "enabled\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := BinfmtPlatforms(dir); !slices.Equal(got, []string{"linux/arm64"}) {
		t.Fatalf("BinfmtPlatforms = %v; want [linux/arm64]", got)
	}
	if got := BinfmtPlatforms(filepath.Join(dir, "absent")); got != nil {
		t.Fatalf("BinfmtPlatforms of a missing dir = %v", got)
	}
}

// The Dockerfile frontend gets the platform as buildx passes it, which
// sets TARGETPLATFORM and the rest.
func TestFrontendAttrsPlatform(t *testing.T) {
	o := BuildKitOptions{BuildOptions: BuildOptions{Platform: "linux/arm64"}}
	if got := frontendAttrs(o, "Dockerfile")["platform"]; got != "linux/arm64" {
		t.Fatalf("platform attr = %q", got)
	}
	if _, ok := frontendAttrs(BuildKitOptions{}, "Dockerfile")["platform"]; ok {
		t.Fatal("platform attr set for a build without platform")
	}
}
