package tests

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestSecretIsMaskedInEveryForm: a step prints its secret plainly, in
// base64 at each of the three alignments, URL-encoded (query and path
// style), in hex (lower and upper case) and split over two lines. The
// client sees masks only, and no form is in kilnd's log or its data dir
// (where JetStream keeps every event, record and KV value).
func TestSecretIsMaskedInEveryForm(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	secret := "tok/" + uniq() + "+=&?" + uniq() + " end"
	t.Setenv("KILN_E2E_MASK_TOKEN", secret)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=secret,id=tok S=\"$(cat /run/secrets/tok)\" && echo " + uniq() + " && \\\n" +
		"  echo \"plain: $S\" && \\\n" +
		"  printf '%s' \"$S\" | base64 && \\\n" +
		"  printf 'x%s' \"$S\" | base64 && \\\n" +
		"  printf 'xy%s' \"$S\" | base64 && \\\n" +
		"  printf '%s' \"$S\" | sed -e 's|%|%25|g; s|/|%2F|g; s|+|%2B|g; s|=|%3D|g; s|&|%26|g; s|?|%3F|g; s| |+|g' && echo && \\\n" +
		"  printf '%s' \"$S\" | sed -e 's|%|%25|g; s|/|%2F|g; s|?|%3F|g; s| |%20|g' && echo && \\\n" +
		"  printf '%s' \"$S\" | od -An -tx1 | tr -d ' \\n' && echo && \\\n" +
		"  printf '%s' \"$S\" | od -An -tx1 | tr -d ' \\n' | tr a-f A-F && echo && \\\n" +
		"  printf '%s' \"$S\" | cut -c1-12 && printf '%s' \"$S\" | cut -c13-\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--secret", "id=tok,env=KILN_E2E_MASK_TOKEN", dir)
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	b := []byte(secret)
	b64 := func(prefix string) string {
		enc := base64.StdEncoding.EncodeToString(append([]byte(prefix), b...))
		return enc[4 : len(enc)-4] // the middle: what only the secret's bits make
	}
	forms := map[string]string{
		"plain":            secret,
		"base64":           b64(""),
		"base64 after 1":   b64("x"),
		"base64 after 2":   b64("xy"),
		"query-escaped":    url.QueryEscape(secret),
		"path-escaped":     url.PathEscape(secret),
		"hex":              hex.EncodeToString(b),
		"HEX":              strings.ToUpper(hex.EncodeToString(b)),
		"first line split": secret[:12],
		"second line":      secret[12:],
	}
	out := r.stdout + r.stderr
	for name, form := range forms {
		if strings.Contains(out, form) {
			t.Errorf("the client's output shows the secret's %s form %q:\n%s", name, form, r)
		}
	}
	if n := strings.Count(out, "****"); n < 10 {
		t.Errorf("the output has %d masks, want one for each of the 10 lines printing a form:\n%s", n, r)
	}
	for name, form := range forms {
		k.mustNotHold(t, "the secret's "+name+" form", form)
	}
}
