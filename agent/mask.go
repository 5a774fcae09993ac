package agent

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/kilnbuild/kiln/agent/engine"
)

// masked replaces a secret's value wherever a build's output shows it.
const masked = "****"

// Lengths that keep masking from hiding ordinary text.
const (
	// minDerivedLen is the shortest encoded form (base64, hex, URL
	// encoding) that is masked: shorter ones would hide common text. The
	// plain value is masked whatever its length.
	minDerivedLen = 4
	// minSplitLen is the shortest start of a form that a line may end
	// with, or end of a form that a line may start with, to be masked as
	// a value split across two lines. A line that continues the previous
	// one's start of a form is masked whatever the length.
	minSplitLen = 6
)

// masker hides a build's secret values in what the build prints: a step
// that echoes a secret shows "****" in the log, the events and the error.
//
// It hides each value in the forms a build prints it in: as it is, each
// of its lines, its base64 (standard and URL alphabets, at each of the
// three alignments the value can have in a longer encoded stream: the
// stable middle of the encoding of the value preceded by 0, 1 or 2
// unknown bytes, as GitHub Actions does), its URL encodings (query and
// path) and its hex (lower and upper case).
//
// Output reaches the masker in lines (the engine package joins the
// chunks of a step's output into lines and cuts lines only past 64 KiB),
// so a value split across chunks is whole again. A value split across
// two lines of one stream is masked too: a line's end that is the start
// of a form (at least minSplitLen bytes) and a line's start that is the
// end of one (at least minSplitLen bytes, or any length when it
// continues the start of the form the stream's previous line ended with).
//
// What it cannot hide: the first minSplitLen-1 bytes of a form when a
// line ends there (indistinguishable from ordinary text until the next
// line comes, and lines are not held back), a value split over three or
// more lines or interleaved with other output, and any other transform a
// build applies (reversed, compressed, hashed, encrypted). Masking guards
// against printing a secret by mistake; a build that means to leak one
// can.
//
// A nil masker hides nothing.
type masker struct {
	r     *strings.Replacer
	forms []string // every form, longest first

	mu    sync.Mutex
	tails map[int][]partial // per stream: the starts of forms its previous line ended with
}

// partial is a line's end that is the start of a form: form[:n].
type partial struct {
	form string
	n    int
}

// newMasker masks each non-empty value in all its forms, longest first.
func newMasker(secrets map[string][]byte) *masker {
	var forms []string
	seen := map[string]bool{}
	add := func(v string, min int) {
		if len(v) < min || strings.TrimSpace(v) == "" || seen[v] {
			return
		}
		seen[v] = true
		forms = append(forms, v)
	}
	for _, v := range secrets {
		s := strings.TrimRight(string(v), "\r\n")
		if strings.TrimSpace(s) == "" {
			continue
		}
		add(s, 1)
		for l := range strings.Lines(s) {
			add(strings.TrimRight(l, "\r\n"), 1)
		}
		for _, f := range encodedForms([]byte(s)) {
			add(f, minDerivedLen)
		}
		if s != string(v) { // the value with its final newline, encoded
			for _, f := range encodedForms(v) {
				add(f, minDerivedLen)
			}
		}
	}
	if len(forms) == 0 {
		return nil
	}
	sort.SliceStable(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	args := make([]string, 0, 2*len(forms))
	for _, f := range forms {
		args = append(args, f, masked)
	}
	return &masker{r: strings.NewReplacer(args...), forms: forms, tails: map[int][]partial{}}
}

// encodedForms returns the encodings of v a build may print.
func encodedForms(v []byte) []string {
	out := []string{
		url.QueryEscape(string(v)), url.PathEscape(string(v)),
		hex.EncodeToString(v), strings.ToUpper(hex.EncodeToString(v)),
	}
	// base64 works on 3-byte groups: v preceded by k unknown bytes shares
	// its first group with them, so v[(3-k)%3:] is what starts a group.
	// Of its encoding, only the characters made of v's bits alone are
	// stable: the last group's partial character holds bits of what
	// follows.
	for _, skip := range []int{0, 1, 2} {
		if skip >= len(v) {
			break
		}
		b := v[skip:]
		stable := len(b) * 8 / 6
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			out = append(out, enc.EncodeToString(b)[:stable])
		}
	}
	return out
}

// line masks one piece of text on its own: every form, and a start or end
// of a form at the text's edges.
func (m *masker) line(s string) string {
	if m == nil {
		return s
	}
	return m.edges(m.r.Replace(s))
}

// log masks a line of output of one stream (a step's output, or the push
// log): as line does, and also the end of a form whose start ended the
// stream's previous line.
func (m *masker) log(stream int, s string) string {
	if m == nil {
		return s
	}
	m.mu.Lock()
	prev := m.tails[stream]
	m.tails[stream] = m.partials(s, m.tails[stream][:0:0])
	m.mu.Unlock()
	cont := 0 // how many bytes at the start continue a form
	for _, p := range prev {
		if rest := p.form[p.n:]; len(rest) > cont && strings.HasPrefix(s, rest) {
			cont = len(rest)
		}
	}
	if cont == 0 {
		return m.line(s)
	}
	return masked + m.line(s[cont:])
}

// edges masks a line's end that is the start of a form and a line's start
// that is the end of one, each at least minSplitLen bytes long.
func (m *masker) edges(s string) string {
	end := 0 // bytes at the end that start a form
	start := 0
	for _, f := range m.forms {
		for n := min(len(f)-1, len(s)); n >= minSplitLen && n > end; n-- {
			if strings.HasSuffix(s, f[:n]) {
				end = n
				break
			}
		}
		for n := min(len(f)-1, len(s)); n >= minSplitLen && n > start; n-- {
			if strings.HasPrefix(s, f[len(f)-n:]) {
				start = n
				break
			}
		}
	}
	if start+end > len(s) { // one overlaps the other: all of it
		return masked
	}
	if end > 0 {
		s = s[:len(s)-end] + masked
	}
	if start > 0 {
		s = masked + s[start:]
	}
	return s
}

// partials returns the starts of forms s ends with, appended to out.
func (m *masker) partials(s string, out []partial) []partial {
	for _, f := range m.forms {
		for n := min(len(f)-1, len(s)); n >= 1; n-- {
			if strings.HasSuffix(s, f[:n]) {
				out = append(out, partial{form: f, n: n})
			}
		}
	}
	return out
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
