package agent

import (
	"errors"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/kilnbuild/kiln/agent/engine"
)

// masked replaces a secret's value wherever a build's output shows it.
const masked = "****"

// masker hides a build's secret values in what the build prints: a step
// that echoes a secret shows "****" in the log, the events and the error.
// A nil masker hides nothing.
type masker struct {
	r *strings.Replacer
}

// newMasker masks each non-empty value, and each of its lines on its own
// (a multi-line secret is printed one line per log line), longest first.
func newMasker(secrets map[string][]byte) *masker {
	var vals []string
	seen := map[string]bool{}
	add := func(v string) {
		v = strings.TrimRight(v, "\r\n")
		if strings.TrimSpace(v) == "" || seen[v] {
			return
		}
		seen[v] = true
		vals = append(vals, v)
	}
	for _, v := range secrets {
		add(string(v))
		for l := range strings.Lines(string(v)) {
			add(l)
		}
	}
	if len(vals) == 0 {
		return nil
	}
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	args := make([]string, 0, 2*len(vals))
	for _, v := range vals {
		args = append(args, v, masked)
	}
	return &masker{r: strings.NewReplacer(args...)}
}

func (m *masker) line(s string) string {
	if m == nil {
		return s
	}
	return m.r.Replace(s)
}

// err masks a build error's message.
func (m *masker) err(err error) error {
	if m == nil || err == nil {
		return err
	}
	var be *engine.BuildError
	if errors.As(err, &be) {
		return &engine.BuildError{Step: be.Step, Instruction: m.line(be.Instruction), Message: m.line(be.Message)}
	}
	if s := err.Error(); m.line(s) != s {
		return errors.New(m.line(s))
	}
	return err
}

// openNoFollow opens a file for reading without following a symlink in
// its last element.
func openNoFollow(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}
