package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

func run(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &App{Stdout: &out, Stderr: &errb, LookupEnv: envOf(env)}
	code = a.Run(t.Context(), args)
	return code, out.String(), errb.String()
}

func TestRun(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	dir := contextDir(t)
	noDockerfile := t.TempDir()
	if err := os.MkdirAll(filepath.Join(noDockerfile, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr := farmtest.ClosedAddr(t)
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		code       int
		stdout     string // substring
		stderr     string // substring
		quietError bool   // stderr must hold nothing but the error
	}{
		{name: "no arguments", code: ExitUsage, stderr: "Usage:  kiln COMMAND"},
		{name: "help", args: []string{"--help"}, code: ExitOK, stdout: "Usage:  kiln COMMAND"},
		{name: "help build", args: []string{"help", "build"}, code: ExitOK, stdout: "Usage:  kiln build [OPTIONS] PATH"},
		{name: "build help", args: []string{"build", "--help"}, code: ExitOK, stdout: "--metadata-file"},
		{name: "version --client", args: []string{"version", "--client"}, code: ExitOK, stdout: "kiln version "},
		{name: "--version", args: []string{"--version"}, code: ExitOK, stdout: "kiln version "},
		{
			name: "version, unreachable farm", args: []string{"version", "--gateway", addr},
			code: ExitUnreachable, stdout: "kiln version ", stderr: "ERROR: cannot reach the kiln gateway at " + addr + ": ",
		},
		{name: "version takes no arguments", args: []string{"version", "now"}, code: ExitUsage, stderr: "accepts no arguments"},
		{name: "help ls", args: []string{"help", "ls"}, code: ExitOK, stdout: "Usage:  kiln ls [OPTIONS]"},
		{name: "builds is ls", args: []string{"builds", "--help"}, code: ExitOK, stdout: "Usage:  kiln ls [OPTIONS]"},
		{name: "ls takes no arguments", args: []string{"ls", "b1"}, code: ExitUsage, stderr: `"kiln ls" takes no arguments`},
		{name: "ls bad state", args: []string{"ls", "--state", "runing"}, code: ExitUsage, stderr: `invalid --state "runing"`},
		{name: "ls bad since", args: []string{"ls", "--since", "yesterday"}, code: ExitUsage, stderr: `invalid --since "yesterday"`},
		{name: "ls bad format", args: []string{"ls", "--format", "{{.Nope}}"}, code: ExitUsage, stderr: "invalid --format"},
		{name: "ls negative limit", args: []string{"ls", "--limit", "-1"}, code: ExitUsage, stderr: "--limit must be 0"},
		{
			name: "ls, unreachable gateway", args: []string{"ls", "--gateway", addr},
			code: ExitUnreachable, stderr: "ERROR: cannot reach the kiln gateway at " + addr + ": ",
		},
		{name: "logs without a build", args: []string{"logs", "-f"}, code: ExitUsage, stderr: `"kiln logs" takes exactly one BUILD id`},
		{name: "logs quiet", args: []string{"logs", "--progress", "quiet", "b1"}, code: ExitUsage, stderr: "--progress quiet prints no log"},
		{name: "inspect without a build", args: []string{"inspect"}, code: ExitUsage, stderr: `"kiln inspect" needs at least one BUILD`},
		{name: "cancel without a build", args: []string{"cancel"}, code: ExitUsage, stderr: `"kiln cancel" needs at least one BUILD`},
		{name: "retry two builds", args: []string{"retry", "b1", "b2"}, code: ExitUsage, stderr: `"kiln retry" takes exactly one BUILD id`},
		{name: "detach with a metadata file", args: []string{"build", "--detach", "--metadata-file", "m.json", dir}, code: ExitUsage, stderr: "which --detach does not wait for"},
		{name: "completion without a shell", args: []string{"completion"}, code: ExitUsage, stderr: "takes one shell: bash, zsh or fish"},
		{name: "completion tcsh", args: []string{"completion", "tcsh"}, code: ExitUsage, stderr: "takes one shell: bash, zsh or fish"},
		{name: "unknown command", args: []string{"bake"}, code: ExitUsage, stderr: `unknown command "bake"`},
		{name: "bad flag", args: []string{"build", "--squash", dir}, code: ExitUsage, stderr: "See 'kiln build --help'."},
		{name: "bad tag", args: []string{"build", "-t", "UPPER/Case:bad tag", dir}, code: ExitUsage, stderr: `invalid tag "UPPER/Case:bad tag"`},
		{name: "agents help", args: []string{"agents", "--help"}, code: ExitOK, stdout: "kiln agents drain|undrain NAME"},
		{name: "drain help", args: []string{"agents", "drain", "--help"}, code: ExitOK, stdout: "Needs an admin token"},
		{name: "undrain help", args: []string{"agents", "undrain", "--help"}, code: ExitOK, stdout: "Usage:  kiln agents undrain NAME"},
		{name: "drain without a name", args: []string{"agents", "drain"}, code: ExitUsage, stderr: "takes one agent name"},
		{
			name: "drain, unreachable gateway", args: []string{"agents", "drain", "--gateway", addr, "builder-1"},
			code: ExitUnreachable, stderr: "ERROR: cannot reach the kiln gateway at " + addr + ": ",
		},
		{
			name: "missing Dockerfile is found before dialling", args: []string{"build", "--gateway", addr, "-f", "x/Dockerfile", noDockerfile},
			code: ExitUsage, stderr: `Dockerfile "x/Dockerfile" not found in build context`,
		},
		{
			name: "unreachable gateway", args: []string{"build", "--progress", "plain", "--gateway", addr, dir},
			code: ExitUnreachable, stderr: "ERROR: cannot reach the kiln gateway at " + addr + ": ",
		},
		{
			name: "unreachable gateway from the environment, quiet", args: []string{"build", "-q", dir},
			env:  map[string]string{"KILN_GATEWAY": addr},
			code: ExitUnreachable, stderr: "ERROR: cannot reach the kiln gateway at " + addr + ": ", quietError: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tt.env, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstderr: %s", code, tt.code, stderr)
			}
			if !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout %q, want it to contain %q", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.stderr)
			}
			if tt.quietError && strings.Count(stderr, "\n") != 1 {
				t.Errorf("quiet mode wrote more than the error: %q", stderr)
			}
		})
	}
}
