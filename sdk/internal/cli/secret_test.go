package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

func TestParseSecretFlag(t *testing.T) {
	tests := []struct {
		value string
		want  secretSource
		err   string // substring; "" means success
	}{
		{value: "id=npm,src=/run/npmrc", want: secretSource{id: "npm", file: "/run/npmrc"}},
		{value: "id=npm,source=npmrc", want: secretSource{id: "npm", file: "npmrc"}},
		{value: "id=kube,env=KUBECONFIG", want: secretSource{id: "kube", env: "KUBECONFIG"}},
		{value: "ID=kube,ENV=KUBECONFIG", want: secretSource{id: "kube", env: "KUBECONFIG"}},
		{value: "src=/home/me/.aws/credentials", want: secretSource{id: "credentials", file: "/home/me/.aws/credentials"}},
		{value: "env=API_TOKEN", want: secretSource{id: "API_TOKEN", env: "API_TOKEN"}},
		{value: "id=API_TOKEN", want: secretSource{id: "API_TOKEN", detect: true}},
		{value: "type=env,id=API_TOKEN", want: secretSource{id: "API_TOKEN", env: "API_TOKEN"}},
		{value: "type=file,id=token.txt", want: secretSource{id: "token.txt", file: "token.txt"}},
		{value: "type=env,src=GH_TOKEN", want: secretSource{id: "GH_TOKEN", env: "GH_TOKEN"}},
		{value: "type=env,id=gh,src=GH_TOKEN", want: secretSource{id: "gh", env: "GH_TOKEN"}},
		{value: "type=file,id=cfg,src=a/b.json", want: secretSource{id: "cfg", file: "a/b.json"}},
		{value: `id=x,"src=dir,with,commas/f"`, want: secretSource{id: "x", file: "dir,with,commas/f"}},
		{value: "id=x,src=a=b", want: secretSource{id: "x", file: "a=b"}},

		{value: "", err: "empty"},
		{value: "npm", err: `field "npm" must be a key=value pair`},
		{value: "id=a,target=/x", err: `unexpected key "target"`},
		{value: "type=ssh,id=a", err: `unsupported secret type "ssh"`},
		{value: "id=a,src=f,env=E", err: "not both"},
		{value: "type=file,id=a,env=E", err: "env= does not go with type=file"},
		{value: "type=env,id=a,src=S,env=E", err: "not both"},
		{value: "type=env", err: "id= is required"},
		{value: "id=", err: "id= is required"},
		{value: "src=/", err: `secret id "/"`},
		{value: "id=a/b,env=E", err: `secret id "a/b"`},
		{value: "id=..,env=E", err: `secret id ".." is not allowed`},
		{value: `id="a`, err: "invalid --secret"},
		{value: "id=a\nid=b", err: "more than one line"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := parseSecretFlag(tt.value)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseSecretFlag(%q) = %+v, %v; want an error containing %q", tt.value, got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("parseSecretFlag(%q) = %+v, want %+v", tt.value, got, tt.want)
			}
		})
	}
}

func TestParseSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const value = "v4lue-that-must-not-leak"
	token := write("token", []byte(value))
	big := write("big", bytes.Repeat([]byte("x"), kiln.MaxSecretBytes+1))
	half := write("half", bytes.Repeat([]byte("x"), 300<<10))
	t.Chdir(dir) // id-only secrets read the file named by the id
	write("FROM_FILE", []byte("file value"))
	env := map[string]string{"NPM_TOKEN": value, "FROM_ENV": "env value", "BIG": strings.Repeat("x", kiln.MaxSecretBytes+1), "EMPTY": ""}
	tests := []struct {
		name   string
		values []string
		want   map[string]string
		err    string
	}{
		{name: "none", values: nil, want: nil},
		{name: "file and variable", values: []string{"id=tok,src=" + token, "id=npm,env=NPM_TOKEN"}, want: map[string]string{"tok": value, "npm": value}},
		{name: "id alone: the variable when set", values: []string{"id=FROM_ENV"}, want: map[string]string{"FROM_ENV": "env value"}},
		{name: "id alone: else the file", values: []string{"id=FROM_FILE"}, want: map[string]string{"FROM_FILE": "file value"}},
		{name: "empty variable is a value", values: []string{"env=EMPTY"}, want: map[string]string{"EMPTY": ""}},
		{name: "empty flag is skipped", values: []string{"", "env=EMPTY"}, want: map[string]string{"EMPTY": ""}},
		{name: "missing file", values: []string{"id=a,src=" + filepath.Join(dir, "nope")}, err: `secret "a": open ` + filepath.Join(dir, "nope") + ": no such file or directory"},
		{name: "id alone, neither variable nor file", values: []string{"id=NOWHERE"}, err: `secret "NOWHERE": no environment variable NOWHERE and no file NOWHERE`},
		{name: "missing variable", values: []string{"id=a,env=UNSET"}, err: `secret "a": environment variable UNSET is not set`},
		{name: "directory", values: []string{"id=d,src=" + dir}, err: "is not a regular file"},
		{name: "duplicate id", values: []string{"id=npm,env=NPM_TOKEN", "id=npm,src=" + token}, err: `secret id "npm" is given twice`},
		{name: "file too large", values: []string{"id=big,src=" + big}, err: fmt.Sprintf(`secret "big": file %s is 512001 bytes, over the limit of 512000 bytes`, big)},
		{name: "variable too large", values: []string{"env=BIG"}, err: `secret "BIG": environment variable BIG is 512001 bytes, over the limit`},
		{name: "too large together", values: []string{"id=a,src=" + half, "id=b,src=" + half}, err: "614400 bytes together, over the limit of 524288"},
		{name: "bad flag", values: []string{"id=a,bogus=1"}, err: `unexpected key "bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSecrets(tt.values, envOf(env))
			if tt.err != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseSecrets = %v, want a usage error containing %q", err, tt.err)
				}
				if strings.Contains(err.Error(), value) {
					t.Fatalf("the error holds the secret's value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("parseSecrets = %q, want %q", got, tt.want)
			}
			for id, v := range tt.want {
				if g, ok := got[id]; !ok || string(g) != v {
					t.Fatalf("parseSecrets = %q, want %q", got, tt.want)
				}
			}
		})
	}

	many := make([]string, kiln.MaxSecrets+1)
	for i := range many {
		many[i] = fmt.Sprintf("id=s%d,env=EMPTY", i)
	}
	if _, err := parseSecrets(many, envOf(env)); err == nil || !strings.Contains(err.Error(), "101 build secrets given, at most 100") {
		t.Fatalf("%d secrets: %v", len(many), err)
	}
}

// FuzzParseSecretFlag: the parser never panics, and what it accepts has a
// valid id and exactly one way to find the value.
func FuzzParseSecretFlag(f *testing.F) {
	for _, s := range []string{"id=a,src=/f", "env=X", "type=env,src=Y", "id=a", `"id=a,b",src=c`, "src=", "type=file", "id=a,id=b", "\"", "id=a\r\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		s, err := parseSecretFlag(value)
		if err != nil {
			return
		}
		if kiln.ValidateSecretID(s.id) != nil {
			t.Fatalf("parseSecretFlag(%q) accepted the id %q", value, s.id)
		}
		ways := 0
		for _, w := range []bool{s.file != "", s.env != "", s.detect} {
			if w {
				ways++
			}
		}
		if ways != 1 {
			t.Fatalf("parseSecretFlag(%q) = %+v: %d ways to the value, want 1", value, s, ways)
		}
	})
}

// TestBuildWithSecrets runs kiln build against a farm with a secrets key:
// the farm receives each secret sealed to its key, the output never shows
// a value, and --builder reaches the spec.
func TestBuildWithSecrets(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t, farmtest.WithSecretsKey())
	dir := contextDir(t)
	const fileValue, envValue = "file-secret-0123456789", "env-secret-9876543210"
	secretFile := filepath.Join(t.TempDir(), "npmrc")
	if err := os.WriteFile(secretFile, []byte(fileValue), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, map[string]string{"GH_TOKEN": envValue},
		"build", "--progress", "plain", "--builder", "buildkit",
		"--secret", "id=npmrc,src="+secretFile, "--secret", "id=gh,env=GH_TOKEN", "--gateway", farm.Addr, dir)
	if code != ExitOK {
		t.Fatalf("exit code %d\nstderr: %s", code, stderr)
	}
	for _, v := range []string{fileValue, envValue} {
		if strings.Contains(stdout+stderr, v) {
			t.Errorf("the output shows a secret's value:\n%s%s", stdout, stderr)
		}
	}
	builds := farm.Builds()
	if len(builds) != 1 {
		t.Fatalf("%d builds on the farm", len(builds))
	}
	spec := builds[0].GetSpec()
	if spec.GetBuilder().String() != "BUILDER_BUILDKIT" {
		t.Errorf("builder %v", spec.GetBuilder())
	}
	opened := map[string]string{}
	for _, s := range spec.GetSecrets() {
		if bytes.Contains(s.GetSealed(), []byte(fileValue)) || bytes.Contains(s.GetSealed(), []byte(envValue)) {
			t.Errorf("secret %q travelled in the clear", s.GetId())
		}
		v, err := farm.OpenSecret(builds[0], s)
		if err != nil {
			t.Fatal(err)
		}
		opened[s.GetId()] = string(v)
	}
	if len(opened) != 2 || opened["npmrc"] != fileValue || opened["gh"] != envValue {
		t.Fatalf("the farm opened %d secrets with ids %v", len(opened), keys(opened))
	}
}

func TestBuildWithSecretsErrors(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	noKey := farmtest.Start(t)
	dir := contextDir(t)
	const value = "never-show-me"
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{name: "missing variable", args: []string{"--secret", "id=a,env=UNSET"}, code: ExitUsage, stderr: `ERROR: secret "a": environment variable UNSET is not set`},
		{name: "duplicate id", args: []string{"--secret", "id=a,env=SET", "--secret", "id=a,env=SET"}, code: ExitUsage, stderr: `secret id "a" is given twice`},
		{name: "farm without a secrets key", args: []string{"--secret", "id=a,env=SET"}, code: ExitUsage, stderr: "this farm has no secrets key configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{"build", "--progress", "plain", "--gateway", noKey.Addr}, tt.args...), dir)
			code, stdout, stderr := run(t, map[string]string{"SET": value}, args...)
			if code != tt.code || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit code %d, stderr %q; want %d and %q", code, stderr, tt.code, tt.stderr)
			}
			if strings.Contains(stdout+stderr, value) {
				t.Errorf("the output shows the secret's value: %s", stderr)
			}
		})
	}
	if n := len(noKey.Builds()); n != 0 {
		t.Errorf("%d builds started", n)
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
