package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/sdk/kiln"
)

func TestParseBuildContextFlags(t *testing.T) {
	dir := contextDir(t)
	extra := t.TempDir()
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, o *buildOptions)
		err   string
	}{
		{name: "local and sources", args: []string{"--build-context", "base=" + extra, "--build-context", "docker.io/library/alpine:latest=docker-image://busybox:1.36",
			"--build-context", "src=https://example.com/r.git#v1:app", dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.buildContexts["base"] != extra || len(o.buildContexts) != 1 {
					t.Errorf("local contexts %v", o.buildContexts)
				}
				got := o.spec.GetBuildContexts()
				if len(got) != 2 || got[0].GetName() != "alpine" || got[0].GetSource() != "docker-image://busybox:1.36" || got[1].GetName() != "src" || got[1].GetSource() != "https://example.com/r.git#v1:app" {
					t.Errorf("sources %v", got)
				}
			}},
		{name: "twice", args: []string{"--build-context", "a=" + extra, "--build-context", "a=docker-image://x", dir}, err: "--build-context a is given twice"},
		{name: "missing dir", args: []string{"--build-context", "a=" + filepath.Join(extra, "nope"), dir}, err: "no such file or directory"},
		{name: "file", args: []string{"--build-context", "a=" + filepath.Join(dir, "Dockerfile"), dir}, err: "is not a directory"},
		{name: "bad name", args: []string{"--build-context", "A=" + extra, dir}, err: "lowercase"},
		{name: "target", args: []string{"--build-context", "a=target:b", dir}, err: "bake"},
		{name: "token in URL", args: []string{"--build-context", "a=https://tok@h/r.git", dir}, err: "GIT_AUTH_TOKEN.h"},
		{name: "git URL context", args: []string{"-f", "docker/Dockerfile", "https://example.com/o/r.git#main:svc"},
			check: func(t *testing.T, o *buildOptions) {
				if o.spec.GetGitContext() != "https://example.com/o/r.git#main:svc" || o.contextDir != "" || o.spec.GetDockerfile() != "docker/Dockerfile" {
					t.Errorf("git context %q, dir %q, dockerfile %q", o.spec.GetGitContext(), o.contextDir, o.spec.GetDockerfile())
				}
				if o.spec.GetRepository() != "https://example.com/o/r.git//svc" {
					t.Errorf("repository %q", o.spec.GetRepository())
				}
			}},
		{name: "git URL with -f outside", args: []string{"-f", "../Dockerfile", "https://example.com/o/r.git"}, err: "inside the repository"},
		{name: "git URL with credentials", args: []string{"https://u:secret@example.com/o/r.git"}, err: "--secret id=GIT_AUTH_TOKEN.example.com"},
		{name: "ssh git URL", args: []string{"git@github.com:o/r.git"}, err: "ssh Git URLs are not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseBuildArgs(tc.args, envOf(nil))
			if tc.err != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret@") || strings.Contains(err.Error(), "tok@") {
					t.Fatalf("the error shows the credential: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

// TestPackContextsPacksNamedDirectories: a local --build-context is packed
// like the main context, honouring its own .dockerignore, and a Git URL
// build packs no main context.
func TestPackContextsPacksNamedDirectories(t *testing.T) {
	dir := contextDir(t)
	extra := t.TempDir()
	for name, data := range map[string]string{"keep.txt": "k", "skip.log": "s", ".dockerignore": "*.log\n"} {
		if err := os.WriteFile(filepath.Join(extra, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, err := parseBuildArgs([]string{"--build-context", "base=" + extra, dir}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	bc, named, err := o.packContexts(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if bc == nil || len(named) != 1 {
		t.Fatalf("main %v, named %v", bc, named)
	}
	var paths []string
	for _, e := range named["base"].Manifest().GetEntries() {
		paths = append(paths, e.GetPath())
	}
	if strings.Join(paths, ",") != ".dockerignore,keep.txt" {
		t.Fatalf("named context holds %v, want .dockerignore and keep.txt", paths)
	}

	o, err = parseBuildArgs([]string{"https://example.com/o/r.git"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if bc, _, err = o.packContexts(context.Background(), []kiln.PackOption{kiln.WithDockerfile([]byte("FROM scratch\n"))}); err != nil || bc != nil {
		t.Fatalf("a Git URL build packed %v, %v", bc, err)
	}
}
