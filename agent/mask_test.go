package agent

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
)

// printedForms are the ways a step prints a secret that the masker hides:
// what a shell's base64, xxd -p, od or a URL builder would write.
func printedForms(secret string) map[string]string {
	b := []byte(secret)
	return map[string]string{
		"plain":          secret,
		"base64":         base64.StdEncoding.EncodeToString(b),
		"base64 after 1": base64.StdEncoding.EncodeToString(append([]byte("x"), b...)),
		"base64 after 2": base64.StdEncoding.EncodeToString(append([]byte("xy"), b...)),
		"base64 after 3": base64.StdEncoding.EncodeToString(append([]byte("xyz"), b...)),
		"base64url":      base64.URLEncoding.EncodeToString(append([]byte("?"), b...)),
		"base64 newline": base64.StdEncoding.EncodeToString(append(b, '\n')),
		"query":          url.QueryEscape(secret),
		"path":           url.PathEscape(secret),
		"hex":            hex.EncodeToString(b),
		"HEX":            strings.ToUpper(hex.EncodeToString(b)),
	}
}

func TestMaskerHidesEncodedForms(t *testing.T) {
	const secret = "s3cr3t/+?&=value with spaces~"
	m := newMasker(map[string][]byte{"tok": []byte(secret)})
	for name, printed := range printedForms(secret) {
		t.Run(name, func(t *testing.T) {
			out := m.line("before " + printed + " after")
			if !strings.Contains(out, masked) || !strings.HasPrefix(out, "before ") || !strings.HasSuffix(out, " after") {
				t.Fatalf("line(%q) = %q", printed, out)
			}
			// What the masker leaves of an encoded form is the encoding of
			// the bytes around the value and the few characters that mix
			// their bits with the value's.
			rest := strings.TrimSuffix(strings.TrimPrefix(out, "before "), " after")
			left := strings.Replace(rest, masked, "", 1)
			if len(left) > 8 {
				t.Fatalf("line(%q) = %q: %q of the form is left", printed, out, left)
			}
		})
	}
}

func TestMaskerShortValuesOnlyPlain(t *testing.T) {
	m := newMasker(map[string][]byte{"pin": []byte("ab")})
	// "ab" in base64 is "YWI": masking 2 or 3 characters of base64
	// everywhere would hide ordinary text, so encoded forms shorter than
	// minDerivedLen are not masked; the value itself and its 4-character
	// hex are.
	if got := m.line("ab YWI= 6162"); got != "**** YWI= ****" {
		t.Fatalf("line = %q", got)
	}
}

func TestMaskerSplitAcrossLines(t *testing.T) {
	const secret = "tok-0123456789abcdef"
	hexForm := hex.EncodeToString([]byte(secret))
	for _, tt := range []struct {
		name         string
		first, next  string
		want1, want2 string
	}{
		{"halves", "key: tok-012345", "6789abcdef end", "key: ****", "**** end"},
		{"short start continued", "key: tok", "-0123456789abcdef end", "key: tok", "**** end"},
		{"short end", "tok-0123456789abcd", "ef", "****", "****"},
		{"hex split", "x " + hexForm[:17], hexForm[17:] + " y", "x ****", "**** y"},
		{"unrelated next line", "key: tok-012345", "other text", "key: ****", "other text"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newMasker(map[string][]byte{"tok": []byte(secret)})
			got1 := m.log(3, tt.first)
			got2 := m.log(3, tt.next)
			if got1 != tt.want1 || got2 != tt.want2 {
				t.Fatalf("log(%q), log(%q) = %q, %q; want %q, %q", tt.first, tt.next, got1, got2, tt.want1, tt.want2)
			}
		})
	}
	// Another stream's line in between does not end the first stream's
	// split value.
	m := newMasker(map[string][]byte{"tok": []byte(secret)})
	m.log(1, "a tok-01")
	m.log(2, "noise")
	if got := m.log(1, "23456789abcdef b"); got != "**** b" {
		t.Fatalf("continued line after another stream's = %q", got)
	}
	// Ordinary lines are untouched.
	if got := m.line("Step 1/2 : RUN make"); got != "Step 1/2 : RUN make" {
		t.Fatalf("ordinary line = %q", got)
	}
}

func TestEncodedFormsAlignments(t *testing.T) {
	v := []byte("abcdefgh")
	forms := encodedForms(v)
	// Whatever precedes v in an encoded stream, one of the forms is a
	// substring of the stream's encoding.
	for pre := 0; pre < 6; pre++ {
		stream := append([]byte(strings.Repeat("\x00", pre)), v...)
		stream = append(stream, "tail"...)
		enc := base64.StdEncoding.EncodeToString(stream)
		found := false
		for _, f := range forms {
			found = found || (len(f) >= 8 && strings.Contains(enc, f))
		}
		if !found {
			t.Errorf("%d bytes before the value: no form of %v in %s", pre, forms, enc)
		}
	}
}

// FuzzMasker: for any secret and surrounding text, a masked line never
// holds the secret or an encoded form of it, and a split value's second
// part never survives.
func FuzzMasker(f *testing.F) {
	f.Add("hunter2-secret", "(", ") ", 5)
	f.Add("p@ss w/rd+=&?", "", "", 3)
	f.Add("\x00\xff\xfe binary", "'", "'", 9)
	f.Fuzz(func(t *testing.T, secret, before, after string, cut int) {
		if len(secret) < 8 || strings.TrimSpace(secret) == "" || strings.ContainsAny(secret, "*\r\n") {
			return
		}
		// Text around the value that could itself spell a part of an
		// encoded form would make the checks below ambiguous.
		if strings.ContainsFunc(before+after, func(r rune) bool { return !strings.ContainsRune(" .:;!,'\"()[]{}<>|#\t", r) }) {
			return
		}
		m := newMasker(map[string][]byte{"s": []byte(secret)})
		for name, form := range printedForms(secret) {
			out := m.line(before + form + after)
			inner := form
			if strings.HasPrefix(name, "base64") {
				inner = form[4 : len(form)-4] // the stable middle, whatever the alignment
			}
			if strings.Contains(out, inner) {
				t.Fatalf("%s form %q survives in %q", name, form, out)
			}
		}
		if cut < 0 {
			cut = -cut
		}
		cut = 1 + cut%(len(secret)-1)
		m.log(0, before+secret[:cut])
		if out := m.log(0, secret[cut:]+after); strings.HasPrefix(out, secret[cut:]) {
			t.Fatalf("split at %d: second line %q shows %q", cut, out, secret[cut:])
		}
	})
}
