package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules/outputs"
)

// TestBuildOutputFlag: --output puts the one exported output on the spec
// without its dest, keeps the dest for the download, turns the registry
// into --push, and refuses what buildx or the farm would, with exit 2.
func TestBuildOutputFlag(t *testing.T) {
	dir := contextDir(t)
	for _, tc := range []struct {
		args           []string
		typ, dest      string
		push           bool
		attrs          map[string]string
		wantNoOutputs  bool
		wantOutputsLen int
	}{
		{args: []string{"-o", "out"}, typ: "local", dest: "out"},
		{args: []string{"--output", "type=local,dest=a/b"}, typ: "local", dest: "a/b"},
		{args: []string{"-o", "-"}, typ: "tar", dest: "-"},
		{args: []string{"-o", "type=tar,dest=fs.tar"}, typ: "tar", dest: "fs.tar"},
		{args: []string{"-o", "type=oci,dest=img.tar"}, typ: "oci", dest: "img.tar"},
		{args: []string{"-o", "type=docker,dest=-,name=app:1"}, typ: "docker", dest: "-", attrs: map[string]string{"name": "app:1"}},
		{args: []string{"-t", "r/a:1", "-o", "type=registry", "-o", "type=local,dest=out"}, typ: "local", dest: "out", push: true},
		{args: []string{"-o", "type=cacheonly"}, typ: "cacheonly"},
		{args: []string{"-o", "type=image"}, wantNoOutputs: true},
	} {
		o, err := parseBuildArgs(append(tc.args, dir), envOf(nil))
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if tc.wantNoOutputs {
			if len(o.spec.Outputs) != 0 || o.output.Output != nil || o.spec.Push {
				t.Errorf("%v: outputs %v, push %v; want a build only", tc.args, o.spec.Outputs, o.spec.Push)
			}
			continue
		}
		if len(o.spec.Outputs) != 1 || o.spec.Outputs[0].Type != tc.typ || o.output.Dest != tc.dest || o.spec.Push != tc.push {
			t.Errorf("%v: spec outputs %v dest %q push %v; want type=%s dest %q push %v", tc.args, o.spec.Outputs, o.output.Dest, o.spec.Push, tc.typ, tc.dest, tc.push)
			continue
		}
		if _, ok := o.spec.Outputs[0].Attrs["dest"]; ok {
			t.Errorf("%v: dest went on the wire", tc.args)
		}
		if tc.attrs != nil && o.spec.Outputs[0].Attrs["name"] != tc.attrs["name"] {
			t.Errorf("%v: attrs %v, want %v", tc.args, o.spec.Outputs[0].Attrs, tc.attrs)
		}
	}
	for _, tc := range []struct {
		args    []string
		refused string
	}{
		{[]string{"-o", "type=local"}, "needs dest=DIR"},
		{[]string{"-o", "type=tar,dest=a", "-o", "b"}, "one output per build"},
		{[]string{"-o", "type=s3,dest=a"}, "not an output type"},
		{[]string{"-o", "type=local,dest=a,platform-split=false"}, `does not take "platform-split"`},
		{[]string{"--load"}, "use --push and docker pull, or --output type=docker,dest=- | docker load"},
	} {
		_, err := parseBuildArgs(append(tc.args, dir), envOf(nil))
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tc.refused) {
			t.Errorf("%v: %v (exit %d), want exit 2 saying %q", tc.args, err, ExitCode(err), tc.refused)
		}
	}
}

// TestBuildOutputConflicts: standard output cannot take the output and
// the progress (or a terminal); --detach does not wait for the output; an
// image tarball is one platform's.
func TestBuildOutputConflicts(t *testing.T) {
	dir := contextDir(t)
	for _, tc := range []struct {
		args     []string
		terminal bool
		refused  string
	}{
		{[]string{"-o", "-"}, true, "refusing to write the output to a terminal"},
		{[]string{"-o", "-", "--progress", "json"}, false, "--progress json uses too"},
		{[]string{"-o", "type=docker,dest=-", "-q"}, false, "--progress quiet uses too"},
		{[]string{"-o", "out", "--detach"}, false, "'kiln output ID --output ...'"},
		{[]string{"-t", "r/a:1", "--push", "--platform", "linux/amd64,linux/arm64", "-o", "type=oci,dest=x.tar"}, false, "type=oci holds one image"},
		{[]string{"-o", "-", "--progress", "plain"}, false, ""},
		{[]string{"-t", "r/a:1", "--push", "--platform", "linux/amd64,linux/arm64", "-o", "out"}, false, ""},
	} {
		o, err := parseBuildArgs(append(tc.args, dir), envOf(nil))
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		uerr := checkOutputOptions(o, tc.terminal)
		switch {
		case tc.refused == "" && uerr != nil:
			t.Errorf("%v: %v, want accepted", tc.args, uerr)
		case tc.refused != "" && (uerr == nil || !strings.Contains(uerr.msg, tc.refused)):
			t.Errorf("%v: %v, want a refusal saying %q", tc.args, uerr, tc.refused)
		}
	}
}

// TestOutputCommandUsage: kiln output needs one BUILD and an --output
// that downloads something; the usage lists it.
func TestOutputCommandUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"output"}, "exactly one BUILD id"},
		{[]string{"output", "b1"}, "--output is required"},
		{[]string{"output", "b1", "-o", "type=registry"}, "nothing to download"},
		{[]string{"output", "b1", "-o", "type=cacheonly"}, "nothing to download"},
		{[]string{"output", "b1", "-o", "type=local"}, "needs dest=DIR"},
	} {
		var stderr bytes.Buffer
		a := &App{Stdout: &bytes.Buffer{}, Stderr: &stderr}
		if code := a.Run(context.Background(), tc.args); code != ExitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("kiln %v: exit %d, %q; want exit 2 saying %q", tc.args, code, stderr.String(), tc.want)
		}
	}
	var stdout bytes.Buffer
	(&App{Stdout: &stdout, Stderr: &bytes.Buffer{}}).Run(context.Background(), []string{"--help"})
	if !strings.Contains(stdout.String(), "output") || !strings.Contains(stdout.String(), "resumes") {
		t.Errorf("the usage does not list kiln output:\n%s", stdout.String())
	}
	if outputs.Stdout != "-" {
		t.Fatal("outputs.Stdout moved")
	}
}
