package cli

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDetectRepository(t *testing.T) {
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	config := "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://example.com/up.git\n[remote \"origin\"]\n\turl = git@example.com:team/app.git\n"
	if err := os.WriteFile(filepath.Join(repo, ".git", "config"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(repo, "services", "api")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := t.TempDir()
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	tests := []struct {
		name string
		dir  string
		env  map[string]string
		want string
	}{
		{"gitlab ci", sub, map[string]string{"CI_PROJECT_PATH": "group/app"}, "group/app"},
		{"github actions", sub, map[string]string{"GITHUB_REPOSITORY": "org/app"}, "org/app"},
		{"git origin at the root", repo, nil, "git@example.com:team/app.git"},
		{"git origin from a subdirectory", sub, nil, "git@example.com:team/app.git//services/api"},
		{"no repository", plain, nil, plain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := detectRepository(tc.dir, env(tc.env)); got != tc.want {
				t.Fatalf("detectRepository = %q, want %q", got, tc.want)
			}
		})
	}
}
