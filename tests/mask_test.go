package tests

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"math/big"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// maskMinSplitLen is agent/mask.go's minSplitLen: a line may end with up
// to this many bytes less one of a form's start unmasked (the documented
// residual risk: the masker cannot tell them from ordinary text until
// the next line comes, and it does not hold lines back).
const maskMinSplitLen = 6

// alnum returns n random letters and digits.
func alnum(n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		x, err := rand.Int(rand.Reader, big.NewInt(int64(len(chars))))
		if err != nil {
			panic(err)
		}
		b[i] = chars[x.Int64()]
	}
	return string(b)
}

// base64Middle is the middle of the base64 of prefix+v: the characters
// made of v's bits alone, whatever the bytes around it.
func base64Middle(enc *base64.Encoding, prefix, v string) string {
	s := enc.EncodeToString([]byte(prefix + v))
	return s[4 : len(s)-4]
}

// maskSecret returns a random secret whose every form differs from the
// others: URL escaping changes it ('/', '+', '=', '&', '?', '>' and a space),
// and its base64 at each alignment holds '+' or '/', so the URL alphabet's
// differs too (in ASCII text only '>', '?' and '~' as the third byte of a
// 3-byte group make one: "~?>" puts one there at every alignment). 42
// bytes: long enough that no form turns up by chance, and its base64
// after two more bytes (60 characters) stays on one line of busybox's
// base64 (76).
func maskSecret(t *testing.T) string {
	s := alnum(10) + "/+" + alnum(8) + "~?>" + alnum(4) + "=&" + alnum(8) + " " + alnum(6)
	for _, prefix := range []string{"", "x", "xy"} {
		if !strings.ContainsAny(base64Middle(base64.StdEncoding, prefix, s), "+/") {
			t.Fatalf("the base64 of %q after %d bytes has the same characters in both alphabets", s, len(prefix))
		}
	}
	return s
}

// TestSecretIsMaskedInEveryForm: a step prints its secret plainly, in
// base64 at each of the three alignments in the standard and URL
// alphabets, URL-encoded (query and path style), in hex (lower and upper
// case) and split over two lines. The client sees masks only. Then no
// form is anywhere else: not in kilnd's log, not in its data dir (where
// JetStream keeps every event, record and KV value), not in any NATS
// message heard during the build (see natsCapture for what can be heard)
// nor any value of KILN_BUILDS, not in any span exported (kilnd and the
// CLI export to an in-process OTLP receiver), not in /metrics.
func TestSecretIsMaskedInEveryForm(t *testing.T) {
	otlp := startOTLPReceiver(t)
	traceEnv(t, otlp, "grpc")
	k := mustStartKilnd(t, t.TempDir())
	capture := captureNATS(t, k)
	base := enginetest.BusyboxBase(t)

	secret := maskSecret(t)
	t.Setenv("KILN_E2E_MASK_TOKEN", secret)
	probe := "probe-" + uniq() // printed beside the forms: where it is heard, they would be
	// Each form's line starts with its label and '=' (the step's text,
	// which the output shows too, has the label followed by "$(").
	labelled := []struct{ label, cmd string }{
		{"plain", `printf '%s' "$S"`},
		{"b64-0", `printf '%s' "$S" | base64`},
		{"b64-1", `printf 'x%s' "$S" | base64`},
		{"b64-2", `printf 'xy%s' "$S" | base64`},
		{"b64url-0", `printf '%s' "$S" | base64 | tr '+/' '-_'`},
		{"b64url-1", `printf 'x%s' "$S" | base64 | tr '+/' '-_'`},
		{"b64url-2", `printf 'xy%s' "$S" | base64 | tr '+/' '-_'`},
		{"query", `printf '%s' "$S" | sed -e 's|%|%25|g; s|/|%2F|g; s|+|%2B|g; s|=|%3D|g; s|&|%26|g; s|?|%3F|g; s|>|%3E|g; s| |+|g'`},
		{"path", `printf '%s' "$S" | sed -e 's|%|%25|g; s|/|%2F|g; s|?|%3F|g; s|>|%3E|g; s| |%20|g'`},
		{"hex", `printf '%s' "$S" | od -An -tx1 | tr -d ' \n'`},
		{"HEX", `printf '%s' "$S" | od -An -tx1 | tr -d ' \n' | tr a-f A-F`},
	}
	run := "RUN --mount=type=secret,id=tok S=\"$(cat /run/secrets/tok)\" && echo " + probe
	for _, l := range labelled {
		run += " && \\\n  echo \"" + l.label + "=$(" + l.cmd + ")\""
	}
	// The split: the first half ends a line, the second starts the next.
	run += " && \\\n  echo \"split=$(printf '%s' \"$S\" | cut -c1-12)\" && printf '%s\\n' \"$S\" | cut -c13-\n"
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" + run})
	meta := filepath.Join(t.TempDir(), "meta.json")
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--metadata-file", meta,
		"--secret", "id=tok,env=KILN_E2E_MASK_TOKEN", dir)
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	id := str(metadata(t, meta), "kiln.build.id")
	out := r.stdout + r.stderr
	mustContain(t, out, probe, "the client's output")

	b := []byte(secret)
	forms := map[string]string{
		"plain":         secret,
		"query-escaped": url.QueryEscape(secret),
		"path-escaped":  url.PathEscape(secret),
		"hex":           hex.EncodeToString(b),
		"HEX":           strings.ToUpper(hex.EncodeToString(b)),
		"first half":    secret[:12],
		"second half":   secret[12:],
	}
	for i, prefix := range []string{"", "x", "xy"} {
		forms[fmt.Sprintf("base64 after %d", i)] = base64Middle(base64.StdEncoding, prefix, secret)
		forms[fmt.Sprintf("URL base64 after %d", i)] = base64Middle(base64.URLEncoding, prefix, secret)
	}

	// The client: no form, and every line that printed one shows a mask.
	for name, form := range forms {
		if strings.Contains(out, form) {
			t.Errorf("the client's output shows the secret's %s form %q:\n%s", name, form, r)
		}
	}
	lines := strings.Split(out, "\n")
	printed := func(label string) (int, string) { // the output line of label's form
		for i, line := range lines {
			if j := strings.Index(line, label+"="); j >= 0 && !strings.HasPrefix(line[j+len(label)+1:], "$(") {
				return i, line[j:]
			}
		}
		t.Fatalf("no output line for %s:\n%s", label, r)
		return 0, ""
	}
	for _, l := range labelled {
		if _, line := printed(l.label); !strings.Contains(line, "****") {
			t.Errorf("the %s line shows no mask: %q", l.label, line)
		}
	}
	i, line := printed("split")
	if line != "split=****" || i+1 >= len(lines) || !strings.HasSuffix(lines[i+1], "****") {
		t.Errorf("the split value's lines are %q and %q, want each half masked", line, lines[min(i+1, len(lines)-1)])
	}
	// The residual risk mask.go documents: up to maskMinSplitLen-1 bytes
	// of a form's start at a line's end. Nothing longer of the value may
	// show anywhere in the output.
	for j := 0; j+maskMinSplitLen <= len(secret); j++ {
		if piece := secret[j : j+maskMinSplitLen]; strings.Contains(out, piece) {
			t.Errorf("the client's output shows %q, %d bytes of the secret (at %d)", piece, maskMinSplitLen, j)
		}
	}

	// Everything else is grepped once the build's last spans are in: the
	// agent's attempt span ends after its last report.
	otlp.waitSpans(t, time.Minute, "the agent's span of the build attempt", ofBuild(id), func(got []span) bool {
		return slices.ContainsFunc(got, func(s span) bool { return s.is(scopeAgent, "build attempt") })
	})
	if len(otlp.all(ofBuild(id))) == 0 || !otlp.holds([]byte(id)) {
		t.Fatalf("no span of build %s exported", id)
	}
	if where := capture.find([]byte(probe)); !slices.ContainsFunc(where, func(w string) bool { return strings.HasPrefix(w, "subscription kiln.agent.report.") }) ||
		!slices.ContainsFunc(where, func(w string) bool { return strings.HasPrefix(w, "stream KILN_EVENTS") }) {
		t.Fatalf("the build's output line %q was heard at %v, want the agent's reports and the event log: the capture hears nothing", probe, where)
	}
	records := kvValues(t, k, "KILN_BUILDS")
	if !slices.ContainsFunc(slices.Collect(maps.Keys(records)), func(key string) bool { return strings.HasPrefix(key, id+" ") }) {
		t.Fatalf("KILN_BUILDS has no record of build %s: %v", id, slices.Collect(maps.Keys(records)))
	}
	metricsBody := metricsText(t, k.addrs.HTTP)
	// kilnd stopped has flushed its last spans, log lines and files.
	k.stop()
	t.Logf("grepped: kilnd's log, its data dir, %d values of KILN_BUILDS, %d spans, /metrics (%d bytes), NATS messages: %s",
		len(records), len(otlp.all(func(span) bool { return true })), len(metricsBody), capture.summary())

	for name, form := range forms {
		what := "the secret's " + name + " form"
		k.mustNotHold(t, what, form)
		if where := capture.find([]byte(form)); len(where) > 0 {
			t.Errorf("NATS messages hold %s: %v", what, where)
		}
		for key, v := range records {
			if strings.Contains(string(v), form) {
				t.Errorf("KILN_BUILDS %s holds %s", key, what)
			}
		}
		if otlp.holds([]byte(form)) {
			t.Errorf("an exported span holds %s", what)
		}
		if strings.Contains(metricsBody, form) {
			t.Errorf("/metrics holds %s", what)
		}
	}
}
