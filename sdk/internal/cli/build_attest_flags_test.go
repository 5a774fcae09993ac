package cli

import (
	"strings"
	"testing"
)

// TestAttestFlags: --annotation, --provenance, --sbom, --attest, --call
// and --check land in the spec as buildx means them, and conflicting ones
// are usage errors.
func TestAttestFlags(t *testing.T) {
	dir := contextDir(t)
	o, err := parseBuildArgs([]string{"-t", "r/a:1", "--push", "--annotation", "a=b", "--annotation", "manifest[linux/arm64]:c=d",
		"--provenance", "--attest", "type=sbom,generator=r/syft:1", dir}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	s := o.spec
	if strings.Join(s.Annotations, " ") != "a=b manifest[linux/arm64]:c=d" || s.Provenance != "true" || s.Sbom != "generator=r/syft:1" || s.Call != "" {
		t.Errorf("spec annotations %q provenance %q sbom %q call %q", s.Annotations, s.Provenance, s.Sbom, s.Call)
	}
	if o, err := parseBuildArgs([]string{"--check", dir}, envOf(nil)); err != nil || o.spec.Call != "check" {
		t.Errorf("--check: %v, call %q", err, o.spec.GetCall())
	}
	if o, err := parseBuildArgs([]string{"--call=targets", dir}, envOf(nil)); err != nil || o.spec.Call != "targets" {
		t.Errorf("--call=targets: %v, call %q", err, o.spec.GetCall())
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--check", "--call=outline"}, "--check is --call=check"},
		{[]string{"-t", "r/a:1", "--push", "--provenance=true", "--attest", "type=provenance,mode=max"}, "already set"},
		{[]string{"-t", "r/a:1", "--push", "--check"}, "builds nothing"},
		{[]string{"--attest", "type=vex"}, `unknown type "vex"`},
	} {
		_, err := parseBuildArgs(append(bad.args, dir), envOf(nil))
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: %v (exit %d), want a usage error saying %q", bad.args, err, ExitCode(err), bad.want)
		}
	}
}
