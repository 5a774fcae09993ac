package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// completionScript returns `kiln completion shell`'s output.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	code, stdout, stderr := run(t, nil, "completion", shell)
	if code != ExitOK {
		t.Fatalf("kiln completion %s: exit %d: %s", shell, code, stderr)
	}
	return stdout
}

// TestBashCompletion loads the bash script into a real bash, checks it
// parses (bash -n), and drives its completion function the way bash does
// on TAB: COMP_WORDS and COMP_CWORD set, COMPREPLY read back.
func TestBashCompletion(t *testing.T) {
	script := filepath.Join(t.TempDir(), "kiln.bash")
	if err := os.WriteFile(script, []byte(completionScript(t, "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	ctxDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(ctxDir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		line string // the words before the cursor; the last is completed
		want string // COMPREPLY, space-separated
	}{
		{line: "kiln l", want: "ls logs"},
		{line: "kiln b", want: "build builds"},
		{line: "kiln --v", want: "--version"},
		{line: "kiln ls --st", want: "--state"},
		{line: "kiln ls --state ru", want: "running"},
		{line: "kiln ls --state = c", want: "cancelled"},
		{line: "kiln builds --format j", want: "json"},
		{line: "kiln logs --foll", want: "--follow"},
		{line: "kiln logs --progress q", want: ""},
		{line: "kiln build --progress raw", want: "rawjson"},
		{line: "kiln build --builder c", want: "classic"},
		{line: "kiln build --det", want: "--detach"},
		{line: "kiln build --tag ap", want: ""},
		{line: "kiln build ap", want: "app"},
		{line: "kiln agents u", want: "undrain"},
		{line: "kiln completion f", want: "fish"},
		{line: "kiln version --format t", want: "text"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			words := strings.Fields(tt.line)
			prog := "source " + script + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\nCOMP_CWORD=" +
				strconv.Itoa(len(words)-1) + "\n_kiln\necho \"${COMPREPLY[*]}\"\n"
			cmd := exec.Command("bash", "-c", prog)
			cmd.Dir = ctxDir
			// No gateway answers: completing build ids must not hang or print.
			cmd.Env = append(os.Environ(), "KILN_GATEWAY="+"127.0.0.1:1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tt.want {
				t.Fatalf("completing %q offered %q, want %q", tt.line, got, tt.want)
			}
		})
	}
}

// TestZshAndFishCompletion checks that the zsh and fish scripts name every
// command and every flag of it.
func TestZshAndFishCompletion(t *testing.T) {
	scripts := map[string]string{"zsh": completionScript(t, "zsh"), "fish": completionScript(t, "fish")}
	for _, c := range completionCommands() {
		for _, name := range c.names {
			if !strings.Contains(scripts["zsh"], "    '"+name+":") || !strings.Contains(scripts["fish"], "-a "+name+" ") {
				t.Errorf("command %s missing from the zsh or fish script", name)
			}
		}
		for _, f := range c.flags {
			if !strings.Contains(scripts["zsh"], "--"+f.long+"[") && !strings.Contains(scripts["zsh"], "--"+f.long+"=[") {
				t.Errorf("zsh script lacks %s --%s", c.names[0], f.long)
			}
			if !strings.Contains(scripts["fish"], "__fish_seen_subcommand_from "+strings.Join(c.names, " ")+"' -l "+f.long+" ") {
				t.Errorf("fish script lacks %s --%s", c.names[0], f.long)
			}
		}
	}
	if !strings.HasPrefix(scripts["zsh"], "#compdef kiln\n") {
		t.Errorf("zsh script does not start with #compdef kiln")
	}
}
