package cli

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/spf13/pflag"
)

func envOf(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := kv[k]
		return v, ok
	}
}

// contextDir makes a build context with a Dockerfile.
func contextDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestParseBuildArgs(t *testing.T) {
	dir := contextDir(t)
	file := filepath.Join(dir, "Dockerfile")
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, o *buildOptions)
		// err is a substring of the usage error; "" means success.
		err string
	}{
		{
			name: "defaults",
			args: []string{dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.gateway != DefaultGateway || o.token != "" || o.progress != progress.Auto || o.dockerfile != "" {
					t.Errorf("options %+v", o)
				}
			},
		},
		{
			name: "docker flags",
			args: []string{"-t", "a:1", "--tag", "127.0.0.1:5000/team/app:v2", "--target", "prod", "--push", "--no-cache", "--pull",
				"--label", "org.opencontainers.image.source=https://x", "--label", "empty=", "--metadata-file", "md.json",
				"--iidfile", "iid", "--idempotency-key", "ci-42", dir},
			check: func(t *testing.T, o *buildOptions) {
				s := o.spec
				if !slices.Equal(s.Tags, []string{"a:1", "127.0.0.1:5000/team/app:v2"}) || s.Target != "prod" || !s.Push || !s.NoCache || !s.Pull {
					t.Errorf("spec %v", s)
				}
				if !maps.Equal(s.Labels, map[string]string{"org.opencontainers.image.source": "https://x", "empty": ""}) {
					t.Errorf("labels %v", s.Labels)
				}
				if o.metadataFile != "md.json" || o.iidFile != "iid" || o.idempotencyKey != "ci-42" {
					t.Errorf("options %+v", o)
				}
			},
		},
		{
			name: "build args from values and the environment",
			args: []string{"--build-arg", "A=1", "--build-arg", "B", "--build-arg", "MISSING", "--build-arg", "C=x=y", "--build-arg", "EMPTY=", dir},
			env:  map[string]string{"B": "from-env", "A": "not-this"},
			check: func(t *testing.T, o *buildOptions) {
				want := map[string]string{"A": "1", "B": "from-env", "C": "x=y", "EMPTY": ""}
				if !maps.Equal(o.spec.BuildArgs, want) {
					t.Errorf("build args %v, want %v", o.spec.BuildArgs, want)
				}
			},
		},
		{
			name: "environment supplies gateway, token and progress",
			args: []string{dir},
			env:  map[string]string{"KILN_GATEWAY": "farm:7700", "KILN_TOKEN": "tok", "KILN_PROGRESS": "plain"},
			check: func(t *testing.T, o *buildOptions) {
				if o.gateway != "farm:7700" || o.token != "tok" || o.progress != progress.Plain {
					t.Errorf("options %+v", o)
				}
			},
		},
		{
			name: "flags win over the environment",
			args: []string{"--gateway", "other:1", "--token", "flagtok", "--progress", "json", dir},
			env:  map[string]string{"KILN_GATEWAY": "farm:7700", "KILN_TOKEN": "tok", "KILN_PROGRESS": "plain"},
			check: func(t *testing.T, o *buildOptions) {
				if o.gateway != "other:1" || o.token != "flagtok" || o.progress != progress.JSON {
					t.Errorf("options %+v", o)
				}
			},
		},
		{
			name: "-q means quiet progress",
			args: []string{"-q", dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.progress != progress.Quiet {
					t.Errorf("progress %q", o.progress)
				}
			},
		},
		{
			name: "absolute -f inside the context",
			args: []string{"-f", file, dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.dockerfile != file {
					t.Errorf("dockerfile %q", o.dockerfile)
				}
			},
		},
		{
			name: "relative -f not under the current directory is taken from the context",
			args: []string{"-f", "sub/Dockerfile.dev", dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.dockerfile != "sub/Dockerfile.dev" {
					t.Errorf("dockerfile %q", o.dockerfile)
				}
			},
		},
		{
			name: "builder and secrets",
			args: []string{"--builder", "BuildKit", "--secret", "id=npm,env=NPM_TOKEN", "--secret", "src=" + file, dir},
			env:  map[string]string{"NPM_TOKEN": "tok"},
			check: func(t *testing.T, o *buildOptions) {
				if o.spec.Builder != kilnv1.Builder_BUILDER_BUILDKIT {
					t.Errorf("builder %v", o.spec.Builder)
				}
				if len(o.secrets) != 2 || string(o.secrets["npm"]) != "tok" || string(o.secrets["Dockerfile"]) != "FROM scratch\n" {
					t.Errorf("secrets %q", o.secrets)
				}
				if len(o.spec.Secrets) != 0 {
					t.Errorf("the spec holds secrets before they are sealed: %v", o.spec.Secrets)
				}
			},
		},
		{
			name: "classic builder",
			args: []string{"--builder", "classic", dir},
			check: func(t *testing.T, o *buildOptions) {
				if o.spec.Builder != kilnv1.Builder_BUILDER_CLASSIC || o.secrets != nil {
					t.Errorf("builder %v, secrets %v", o.spec.Builder, o.secrets)
				}
			},
		},
		{
			name: "cache options",
			args: []string{"--cache-from", "registry:5000/app:cache", "--cache-from", "type=registry,ref=registry:5000/base:cache",
				"--cache-to", "type=registry,ref=registry:5000/app:cache,mode=max", "--cache-to", "type=inline", dir},
			check: func(t *testing.T, o *buildOptions) {
				from, to := o.spec.GetCacheFrom(), o.spec.GetCacheTo()
				if len(from) != 2 || from[0].GetType() != "registry" || from[0].GetAttrs()["ref"] != "registry:5000/app:cache" || from[1].GetAttrs()["ref"] != "registry:5000/base:cache" {
					t.Errorf("cache_from %v", from)
				}
				if len(to) != 2 || to[0].GetAttrs()["mode"] != "max" || to[1].GetType() != "inline" {
					t.Errorf("cache_to %v", to)
				}
			},
		},
		{name: "cache type local", args: []string{"--cache-to", "type=local,dest=/tmp/c", dir}, err: "--cache-to type=local reads and writes a directory on the machine that builds"},
		{name: "cache from inline", args: []string{"--cache-from", "type=inline", dir}, err: "--cache-from type=inline is not a cache source"},
		{name: "cache without ref", args: []string{"--cache-to", "type=registry,mode=max", dir}, err: "--cache-to type=registry needs ref="},
		{name: "cache mode unknown", args: []string{"--cache-to", "type=registry,ref=r:5000/a:c,mode=all", dir}, err: `--cache-to mode="all": want min or max`},
		{name: "cache option empty", args: []string{"--cache-from", "", dir}, err: "cache option is empty"},
		{name: "unknown builder", args: []string{"--builder", "kaniko", dir}, err: `invalid --builder "kaniko": want classic or buildkit`},
		{name: "secrets with the classic builder", args: []string{"--builder", "classic", "--secret", "id=a,env=A", dir}, env: map[string]string{"A": "v"}, err: "--secret needs the BuildKit builder"},
		{name: "secret from a missing variable", args: []string{"--secret", "id=a,env=NOPE", dir}, err: `secret "a": environment variable NOPE is not set`},
		{name: "progress values: auto", args: []string{"--progress", "auto", dir}},
		{name: "progress values: tty", args: []string{"--progress=tty", dir}},
		{name: "progress values: quiet", args: []string{"--progress", "quiet", dir}},

		{name: "bad tag names the tag", args: []string{"-t", "UPPER/Case:bad tag", dir}, err: `invalid tag "UPPER/Case:bad tag"`},
		{name: "upper-case repository", args: []string{"-t", "app:1", "-t", "My/App", dir}, err: `invalid tag "My/App"`},
		{name: "tag with digest", args: []string{"-t", "app@sha256:" + strings.Repeat("0", 64), dir}, err: "digest"},
		{name: "unknown progress", args: []string{"--progress", "fancy", dir}, err: `invalid progress mode "fancy"`},
		{name: "unknown progress from the environment", args: []string{dir}, env: map[string]string{"KILN_PROGRESS": "loud"}, err: `invalid progress mode "loud"`},
		{name: "push without tag", args: []string{"--push", dir}, err: "--push needs at least one --tag"},
		{name: "label without value", args: []string{"--label", "foo", dir}, err: `invalid --label "foo"`},
		{name: "label without key", args: []string{"--label", "=v", dir}, err: `invalid --label "=v"`},
		{name: "build arg without key", args: []string{"--build-arg", "=v", dir}, err: `invalid --build-arg "=v"`},
		{name: "no PATH", args: []string{"-t", "a"}, err: "requires exactly 1 argument"},
		{name: "two PATHs", args: []string{dir, dir}, err: "requires exactly 1 argument"},
		{name: "PATH missing", args: []string{filepath.Join(dir, "nope")}, err: "no such file or directory"},
		{name: "PATH is a file", args: []string{file}, err: "is not a directory"},
		{name: "PATH is a URL", args: []string{"https://example.com/context.tar.gz"}, err: "must be a local directory or a Git URL"},
		{name: "stdin Dockerfile", args: []string{"-f", "-", dir}, check: func(t *testing.T, o *buildOptions) {
			if !o.dockerfileStdin || o.dockerfile != "" {
				t.Errorf("-f -: stdin %v, dockerfile %q", o.dockerfileStdin, o.dockerfile)
			}
		}},
		{name: "unknown flag", args: []string{"--no-such-flag", "x", dir}, err: "unknown flag: --no-such-flag"},
		{name: "flag without value", args: []string{dir, "-t"}, err: "flag needs an argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseBuildArgs(tt.args, envOf(tt.env))
			if tt.err == "" {
				if err != nil {
					t.Fatalf("parseBuildArgs: %v", err)
				}
				if tt.check != nil {
					tt.check(t, o)
				}
				return
			}
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err %q, want it to contain %q", err, tt.err)
			}
			if ExitCode(err) != ExitUsage {
				t.Fatalf("ExitCode = %d", ExitCode(err))
			}
		})
	}
}

func TestParseBuildArgsHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		t.Run(arg, func(t *testing.T) {
			if _, err := parseBuildArgs([]string{arg}, envOf(nil)); !errors.Is(err, pflag.ErrHelp) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestResolveDockerfileFromCurrentDirectory(t *testing.T) {
	root := t.TempDir()
	ctx := filepath.Join(root, "ctx")
	for _, p := range []string{"ctx/sub/Dockerfile", "ctx/Dockerfile", "Dockerfile"} {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("FROM scratch\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(root)
	tests := []struct {
		name, file, want, err string
	}{
		{name: "docker reads -f from the current directory", file: "ctx/sub/Dockerfile", want: filepath.Join(ctx, "sub/Dockerfile")},
		{name: "falls back to the context", file: "sub/Dockerfile", want: "sub/Dockerfile"},
		{name: "outside the context, with one inside: the current directory's, as docker", file: "Dockerfile", want: filepath.Join(root, "Dockerfile")},
		{name: "standard input", file: "-", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveDockerfile("ctx", tt.file)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("resolveDockerfile = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestSecretLookingArgs(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []string
	}{
		{name: "none", values: nil},
		{name: "ordinary args", values: []string{"VERSION=1.2", "GOOS=linux", "HTTP_PROXY"}},
		{name: "password", values: []string{"DB_PASSWORD=hunter2"}, want: []string{"DB_PASSWORD"}},
		{name: "token from the environment", values: []string{"NPM_TOKEN"}, want: []string{"NPM_TOKEN"}},
		{name: "secret", values: []string{"client_secret=x"}, want: []string{"client_secret"}},
		{name: "key", values: []string{"AWS_ACCESS_KEY_ID=AKIA"}, want: []string{"AWS_ACCESS_KEY_ID"}},
		{name: "any case", values: []string{"apiKey=x", "GhToken=y"}, want: []string{"apiKey", "GhToken"}},
		{name: "once each, in order", values: []string{"B_TOKEN=1", "A=2", "A_SECRET=3", "B_TOKEN=4"}, want: []string{"B_TOKEN", "A_SECRET"}},
		{name: "value alone looks secret", values: []string{"MODE=password-token-secret-key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := secretLookingArgs(tt.values); !slices.Equal(got, tt.want) {
				t.Fatalf("secretLookingArgs(%q) = %q, want %q", tt.values, got, tt.want)
			}
		})
	}
}

// TestBuildArgSecretWarning: kiln build warns on stderr about a build arg
// whose name looks secret, names --secret, and never prints the value.
func TestBuildArgSecretWarning(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t)
	dir := contextDir(t)
	const value, envValue = "arg-value-0123456789", "env-value-9876543210"
	code, stdout, stderr := run(t, map[string]string{"GH_TOKEN": envValue},
		"build", "--progress", "plain", "--build-arg", "NPM_TOKEN="+value, "--build-arg", "GH_TOKEN", "--build-arg", "VERSION=1",
		"--gateway", farm.Addr, dir)
	if code != ExitOK {
		t.Fatalf("exit code %d\nstderr: %s", code, stderr)
	}
	for _, name := range []string{"NPM_TOKEN", "GH_TOKEN"} {
		if !strings.Contains(stderr, "WARNING: --build-arg "+name+" looks like a secret") || !strings.Contains(stderr, "--secret id="+name+",env="+name) {
			t.Errorf("no warning about %s on stderr:\n%s", name, stderr)
		}
	}
	if strings.Contains(stderr, "VERSION looks like") {
		t.Errorf("warned about VERSION:\n%s", stderr)
	}
	if strings.Contains(stdout+stderr, value) || strings.Contains(stdout+stderr, envValue) {
		t.Errorf("the output shows a build arg's value:\n%s%s", stdout, stderr)
	}
}
