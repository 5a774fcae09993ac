package kiln

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// matchState carries a directory's match results down to its entries.
type matchState = patternmatcher.MatchInfo

// ignoreMatcher decides which context entries .dockerignore leaves out.
// A nil *ignoreMatcher ignores nothing.
type ignoreMatcher struct {
	pm *patternmatcher.PatternMatcher
	// walkExcludedDirs is set when an exception pattern has wildcards, so
	// any excluded directory may hold something it re-includes.
	walkExcludedDirs bool
}

// loadIgnore reads the ignore file of a context whose Dockerfile is at the
// slash path dockerfile: "<dockerfile>.dockerignore" when it exists (as
// BuildKit does), else ".dockerignore" at the root. Like the docker CLI it
// adds exceptions so the Dockerfile and the ignore file are always sent.
func loadIgnore(root, dockerfile string) (*ignoreMatcher, error) {
	name := dockerfile + ".dockerignore"
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(name)))
	if errors.Is(err, fs.ErrNotExist) {
		name = ".dockerignore"
		data, err = os.ReadFile(filepath.Join(root, name))
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	patterns, err := ignorefile.ReadAll(strings.NewReader(string(data)))
	if err != nil {
		return nil, invalidArgumentf("reading %s: %v", name, err)
	}
	patterns = keepBuildFiles(patterns, name, dockerfile)
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, invalidArgumentf("invalid pattern in %s: %v", name, err)
	}
	m := &ignoreMatcher{pm: pm}
	for _, p := range pm.Patterns() {
		if p.Exclusion() && strings.ContainsAny(patternWithoutTrailingGlob(p), `*?[\`) {
			m.walkExcludedDirs = true
			break
		}
	}
	return m, nil
}

// keepBuildFiles appends exceptions for the ignore file and the Dockerfile
// when the patterns would leave them out, as the docker CLI's
// TrimBuildFilesFromExcludes does.
func keepBuildFiles(patterns []string, ignoreFile, dockerfile string) []string {
	for _, keep := range []string{ignoreFile, dockerfile} {
		if keep == "" { // a named context has no Dockerfile
			continue
		}
		if ignored, _ := patternmatcher.MatchesOrParentMatches(keep, patterns); ignored {
			patterns = append(patterns, "!"+keep)
		}
	}
	return patterns
}

// match reports whether the slash path rel is ignored, given the state of
// its parent directory, and returns the state for rel's own entries.
func (m *ignoreMatcher) match(rel string, parent matchState) (bool, matchState, error) {
	if m == nil {
		return false, matchState{}, nil
	}
	return m.pm.MatchesUsingParentResults(rel, parent)
}

// mayIncludeBelow reports whether an exception pattern could re-include
// something inside the ignored directory rel, so the walk must enter it.
// This is BuildKit's fsutil rule: prefix exceptions are checked exactly,
// wildcard exceptions make every ignored directory worth walking.
func (m *ignoreMatcher) mayIncludeBelow(rel string) bool {
	if m == nil || !m.pm.Exclusions() {
		return false
	}
	if m.walkExcludedDirs {
		return true
	}
	dirSlash := filepath.FromSlash(rel) + string(filepath.Separator)
	for _, p := range m.pm.Patterns() {
		if p.Exclusion() && strings.HasPrefix(p.String()+string(filepath.Separator), dirSlash) {
			return true
		}
	}
	return false
}

// patternWithoutTrailingGlob strips a trailing "/**" or "/*", which do not
// make an exception match below other directories.
func patternWithoutTrailingGlob(p *patternmatcher.Pattern) string {
	s := p.String()
	s = strings.TrimSuffix(s, string(filepath.Separator)+"**")
	s = strings.TrimSuffix(s, string(filepath.Separator)+"*")
	return s
}
