package cli

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// detectRepository names the source a build comes from, for the farm's
// cache-affinity routing: the CI project (GitLab CI_PROJECT_PATH, GitHub
// GITHUB_REPOSITORY), else the git remote "origin" of the repository
// holding dir, else dir's absolute path.
func detectRepository(dir string, lookupEnv func(string) (string, bool)) string {
	for _, env := range []string{"CI_PROJECT_PATH", "GITHUB_REPOSITORY"} {
		if v, ok := lookupEnv(env); ok && v != "" {
			return v
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	for d := abs; ; d = filepath.Dir(d) {
		if url := originURL(filepath.Join(d, ".git", "config")); url != "" {
			if rel, err := filepath.Rel(d, abs); err == nil && rel != "." {
				return url + "//" + filepath.ToSlash(rel)
			}
			return url
		}
		if filepath.Dir(d) == d {
			return abs
		}
	}
}

// originURL reads remote "origin"'s url from a git config file ("" if none).
func originURL(configPath string) string {
	f, err := os.Open(configPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	inOrigin := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			inOrigin = strings.ReplaceAll(line, " ", "") == `[remote"origin"]`
			continue
		}
		if k, v, ok := strings.Cut(line, "="); inOrigin && ok && strings.TrimSpace(k) == "url" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
