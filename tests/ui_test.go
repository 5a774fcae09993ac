package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// chromiumPath is Debian's chromium, which `make dev-env` installs.
const chromiumPath = "/usr/bin/chromium"

// uiBrowser is one headless Chromium driven over the DevTools protocol.
type uiBrowser struct {
	t    *testing.T
	ctx  context.Context
	base string // the gateway's HTTP address, http://host:port
}

// newUIBrowser starts a headless Chromium with a fresh profile (its own
// cookies) for the UI at base; it stops when the test ends.
func newUIBrowser(t *testing.T, base string) *uiBrowser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("no headless browser at %s (make dev-env installs Debian's chromium): %v", chromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); acancel() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &uiBrowser{t: t, ctx: ctx, base: base}
}

func (b *uiBrowser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates js in the page (awaiting a promise) into out (a pointer
// to what JSON.stringify of the result decodes into).
func (b *uiBrowser) eval(js string, out any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("browser: evaluate %.200s: %v", js, err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		b.t.Fatalf("browser: evaluate %.200s: result %.200s: %v", js, raw, err)
	}
}

// waitJS polls js (a boolean expression) until it holds.
func (b *uiBrowser) waitJS(within time.Duration, what, js string) {
	b.t.Helper()
	waitFor(b.t, within, what, func() bool {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("Boolean("+js+")"))
		return err == nil && ok
	})
}

func (b *uiBrowser) open(path string) {
	b.t.Helper()
	b.run("open "+path, chromedp.Navigate(b.base+path), chromedp.WaitReady(chromedp.CSS("body")))
}

// screenshot writes the page as a PNG test artefact and returns its path.
func (b *uiBrowser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("browser: screenshot: %v", err)
	}
	p := filepath.Join(b.t.ArtifactDir(), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s (%d bytes)", p, len(png))
	return p
}

// fetchStatus fetches path from the page, with the page's cookies, and
// returns the HTTP status.
func (b *uiBrowser) fetchStatus(method, path string) int {
	b.t.Helper()
	var code int
	b.eval(fmt.Sprintf(`fetch(%q, {method: %q, credentials: "same-origin"}).then(r => r.status)`, path, method), &code)
	return code
}

// a11yJS checks the page's accessibility basics in the browser: every
// control has an accessible name, and every text's colour contrasts with
// its background by at least 4.5:1 (WCAG AA). It returns the problems.
const a11yJS = `(() => {
  const problems = [];
  const visible = (e) => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e); return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"; };
  const name = (e) => {
    if (e.getAttribute("aria-label")) return e.getAttribute("aria-label");
    if (e.getAttribute("aria-labelledby")) return e.getAttribute("aria-labelledby").split(" ").map((id) => (document.getElementById(id) || {}).textContent || "").join(" ");
    if (e.labels && e.labels.length) return [...e.labels].map((l) => l.textContent).join(" ");
    if (["BUTTON", "A", "SUMMARY"].includes(e.tagName)) return e.textContent;
    return e.getAttribute("title") || "";
  };
  for (const e of document.querySelectorAll("input:not([type=hidden]), button, select, textarea, a[href], summary")) {
    if (!visible(e)) continue;
    if (!name(e).trim()) problems.push("no accessible name: " + e.outerHTML.slice(0, 120));
  }
  const rgb = (c) => { const m = c.match(/[\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 0]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bgOf = (e) => { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
  let checked = 0;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker.nextNode());) {
    const e = n.parentElement;
    if (!n.textContent.trim() || !e || !visible(e)) continue;
    const fg = lum(rgb(getComputedStyle(e).color)), bg = lum(bgOf(e));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    checked++;
    if (ratio < 4.5) problems.push("contrast " + ratio.toFixed(2) + ":1 for " + JSON.stringify(n.textContent.trim().slice(0, 40)) + " in <" + e.tagName.toLowerCase() + " class=" + e.className + ">");
  }
  if (checked === 0) problems.push("no text checked");
  return [...new Set(problems)].slice(0, 20);
})()`

func (b *uiBrowser) checkA11y(page string) {
	b.t.Helper()
	var problems []string
	b.eval(a11yJS, &problems)
	for _, p := range problems {
		b.t.Errorf("accessibility of %s: %s", page, p)
	}
}

// cliLog is `kiln logs --progress json`: the build's log lines and its
// finished steps (step → cached).
func cliLog(t *testing.T, gateway, token, id string) (lines []string, steps map[int]bool) {
	t.Helper()
	r := kiln(t, gateway, "logs", "--progress", "json", "--token", token, id)
	if r.code != 0 {
		t.Fatalf("kiln logs %s: %s", id, r)
	}
	steps = map[int]bool{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Log          *struct{ Text string }
			StepFinished *struct {
				Step   int
				Cached bool
			}
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("kiln logs --progress json printed %q: %v", sc.Text(), err)
		}
		if ev.Log != nil {
			lines = append(lines, ev.Log.Text)
		}
		if ev.StepFinished != nil {
			steps[ev.StepFinished.Step] = ev.StepFinished.Cached
		}
	}
	return lines, steps
}

// TestWebUI drives the gateway's web UI in a real headless Chromium
// against a real multi-tenant kilnd: log in, follow a build the CLI
// started live to SUCCEEDED (steps and their cached state, the log equal to
// `kiln logs`), cancel another from its page, tenant isolation and CSRF
// from the browser, accessibility basics, and screenshots as artefacts.
func TestWebUI(t *testing.T) {
	reg := enginetest.Registry(t)
	base := enginetest.BusyboxBase(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	tokenA := tenantsAdd(t, file, "team-a", "--push", reg+"/kiln-e2e-ui-a/*")
	tokenB := tenantsAdd(t, file, "team-b", "--push", reg+"/kiln-e2e-ui-b/*")
	tokenOps := tenantsAdd(t, file, "ops", "--admin")
	k := mustStartKilnd(t, dir, "--tenants-file", file, "--ui-trace-url", "http://jaeger.example/trace/{trace_id}")
	ctx := t.Context()
	br := newUIBrowser(t, "http://"+k.addrs.HTTP)

	// Log in with team-a's token.
	br.open("/ui/builds")
	br.waitJS(30*time.Second, "the login form", `document.querySelector("#token")`)
	br.checkA11y("the login page")
	br.run("log in", chromedp.SendKeys(chromedp.CSS("#token"), tokenA), chromedp.Click(chromedp.CSS("#login")))
	br.waitJS(30*time.Second, "the build list after login", `location.pathname === "/ui/builds" && document.querySelector("#build-list")`)

	// A build the CLI starts, followed live on its page.
	marker := "ui-" + uniq()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo static-step > /s\n" +
		"RUN for i in $(seq 1 25); do printf '\\033[32m" + marker + "-%d\\033[0m\\n' $i; sleep 0.2; done\n"})
	ref := reg + "/kiln-e2e-ui-a/app:" + uniq()
	p := startKiln(t, ctx, k.addrs.GRPC, "build", "--progress", "plain", "--token", tokenA, "--repository", "kiln-e2e-ui-a/app", "-t", ref, "--push", ctxDir)
	p.waitPrinted(t, ctx, 2*time.Minute, queuedID)
	id := buildIDOf(t, p.stderrLines())
	br.open("/ui/builds/" + id)
	br.waitJS(2*time.Minute, "the build page to show SUCCEEDED", `window.kilnUI && window.kilnUI.ended && window.kilnUI.state === "SUCCEEDED"`)
	if r := p.wait(t, ctx); r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	var seen struct {
		Initial string
		History []string
		Lines   []string
		Steps   []struct {
			Step   int
			Cached bool
			Done   bool
		}
		DOMSteps []struct{ Step, Cached, Done string }
		Pushed   string
		Trace    string
	}
	br.eval(`({initial: kilnUI.initial, history: kilnUI.history, lines: kilnUI.lines,
		steps: [...kilnUI.steps.values()].map(s => ({step: s.step, cached: !!s.cached, done: !!s.done})),
		domSteps: [...document.querySelectorAll("#steps li[data-step]")].map(li => ({step: li.dataset.step, cached: li.dataset.cached, done: li.dataset.done})),
		pushed: document.querySelector("#pushed").textContent, trace: document.querySelector("#trace").hidden ? "" : document.querySelector("#trace").href})`, &seen)
	if seen.Initial == "SUCCEEDED" || len(seen.History) < 2 || seen.History[len(seen.History)-1] != "SUCCEEDED" {
		t.Errorf("the page did not follow the build live: first %s, states %v", seen.Initial, seen.History)
	}
	wantLines, wantSteps := cliLog(t, k.addrs.GRPC, tokenA, id)
	if got, want := strings.Join(seen.Lines, "\n"), strings.Join(wantLines, "\n"); got != want {
		t.Errorf("the page's log differs from kiln logs:\n--- page (%d lines)\n%s\n--- kiln logs (%d lines)\n%s", len(seen.Lines), got, len(wantLines), want)
	}
	if !strings.Contains(strings.Join(seen.Lines, "\n"), marker+"-25") {
		t.Errorf("the page's log lacks the build's output %s-25", marker)
	}
	if len(seen.Steps) != len(wantSteps) || len(seen.DOMSteps) != len(wantSteps) || len(wantSteps) < 3 {
		t.Errorf("steps: page %+v, listed %+v; kiln logs %v", seen.Steps, seen.DOMSteps, wantSteps)
	}
	for _, s := range seen.Steps {
		if cached, ok := wantSteps[s.Step]; !ok || cached != s.Cached || !s.Done {
			t.Errorf("step %d on the page: cached %v done %v; kiln logs: cached %v (listed %v)", s.Step, s.Cached, s.Done, cached, ok)
		}
	}
	for _, s := range seen.DOMSteps {
		var n int
		fmt.Sscan(s.Step, &n)
		if fmt.Sprint(wantSteps[n]) != s.Cached || s.Done != "true" {
			t.Errorf("step %s listed cached=%s done=%s, want cached=%v", s.Step, s.Cached, s.Done, wantSteps[n])
		}
	}
	if !strings.Contains(seen.Pushed, ref+"@sha256:") {
		t.Errorf("pushed images %q lack %s@sha256:…", seen.Pushed, ref)
	}
	if !strings.HasPrefix(seen.Trace, "http://jaeger.example/trace/") {
		t.Logf("no trace link (the build carries no traceparent): %q", seen.Trace)
	}
	// A line's link: #L<sequence> scrolls to and marks it.
	var lineSeq int
	br.eval(`kilnUI.seqs[kilnUI.lines.findIndex(l => l.includes(`+fmt.Sprintf("%q", marker+"-3")+`))]`, &lineSeq)
	br.run("follow a line link", chromedp.Navigate(fmt.Sprintf("%s/ui/builds/%s#L%d", br.base, id, lineSeq)))
	br.waitJS(time.Minute, "line "+fmt.Sprint(lineSeq)+" marked", fmt.Sprintf(`document.querySelector("#L%d.hl") && document.querySelector("#L%d").textContent.includes(%q)`, lineSeq, lineSeq, marker+"-3"))
	br.waitJS(time.Minute, "coloured log text", `document.querySelector("#log .f2")`)
	br.checkA11y("the build page")
	br.screenshot("build.png")

	// Cancel a second build from its page.
	slow := slowBuild(t, base, "ui-cancel-"+uniq(), 600)
	p2 := startKiln(t, ctx, k.addrs.GRPC, "build", "--progress", "plain", "--token", tokenA, slow)
	p2.waitPrinted(t, ctx, 2*time.Minute, queuedID)
	id2 := buildIDOf(t, p2.stderrLines())
	br.open("/ui/builds/" + id2)
	br.waitJS(2*time.Minute, "the second build running", `window.kilnUI && kilnUI.state === "RUNNING" && kilnUI.lines.length > 0`)
	br.run("click cancel", chromedp.Click(chromedp.CSS("#cancel")))
	br.waitJS(2*time.Minute, "the page to show CANCELLED", `kilnUI.state === "CANCELLED"`)
	if r := kiln(t, k.addrs.GRPC, "inspect", "--token", tokenA, id2); !strings.Contains(r.stdout, "BUILD_STATE_CANCELLED") {
		t.Errorf("after the page's cancel, kiln inspect shows: %s", r)
	}

	// The overview.
	br.open("/ui/")
	br.waitJS(time.Minute, "the overview filled", `document.querySelector("#queues tr") && document.querySelector("#failures tr")`)
	br.checkA11y("the overview")
	br.screenshot("overview.png")

	// Trends of the repository: two charts over its builds.
	br.open("/ui/trends?repository=kiln-e2e-ui-a/app")
	br.waitJS(time.Minute, "the trend charts", `document.querySelectorAll("#trends svg.chart").length === 2 && document.querySelectorAll("#trends svg.dur circle").length >= 1`)
	br.checkA11y("the trends page")

	// On a phone's width no page scrolls sideways.
	br.run("a phone's viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	for _, path := range []string{"/ui/", "/ui/builds", "/ui/builds/" + id} {
		br.open(path)
		br.waitJS(time.Minute, path+" laid out for a phone", `document.readyState === "complete"`)
		var wide bool
		br.eval(`document.documentElement.scrollWidth > window.innerWidth + 1`, &wide)
		if wide {
			t.Errorf("%s scrolls sideways at a phone's width", path)
		}
	}
	br.waitJS(time.Minute, "the build page replayed", `window.kilnUI && kilnUI.ended`)
	br.screenshot("build-phone.png")
	br.run("a desktop viewport", chromedp.EmulateReset())

	// An admin sees the agents, with a drain button, and team-a's builds.
	adm := newUIBrowser(t, "http://"+k.addrs.HTTP)
	adm.open("/ui/login")
	adm.run("log in as admin", chromedp.SendKeys(chromedp.CSS("#token"), tokenOps), chromedp.Click(chromedp.CSS("#login")))
	adm.waitJS(30*time.Second, "the overview after login", `location.pathname === "/ui/"`)
	adm.waitJS(time.Minute, "the agents listed", `[...document.querySelectorAll("#agents tr")].some(r => r.textContent.includes("e2e-agent") && r.querySelector("button[aria-label='Drain agent e2e-agent']"))`)
	adm.waitJS(time.Minute, "the admin's queue rows", `document.querySelectorAll("#queues tr").length === 3`)
	adm.checkA11y("the admin's overview")
	adm.screenshot("overview-admin.png")
	if code := adm.fetchStatus("GET", "/ui/api/builds/"+id); code != 200 {
		t.Errorf("the admin's session GET team-a's build: %d, want 200", code)
	}

	// Tenant isolation and CSRF, from team-a's browser session.
	bCtx := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo team-b\n"})
	rb := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--token", tokenB, bCtx)
	if rb.code != 0 {
		t.Fatalf("team-b's build: %s", rb)
	}
	idB := buildIDOf(t, strings.Split(rb.stderr, "\n"))
	for _, path := range []string{"/ui/builds/" + idB, "/ui/api/builds/" + idB, "/ui/api/builds/" + idB + "/events"} {
		if code := br.fetchStatus("GET", path); code != 404 {
			t.Errorf("team-a's session GET %s: %d, want 404", path, code)
		}
	}
	if code := br.fetchStatus("POST", "/ui/builds/"+id+"/retry"); code != 403 {
		t.Errorf("a retry without the CSRF token: %d, want 403", code)
	}
	if code := br.fetchStatus("POST", "/ui/builds/"+id2+"/cancel"); code != 403 {
		t.Errorf("a cancel without the CSRF token: %d, want 403", code)
	}

	// The admin drains the agent from the overview, then undrains it.
	adm.open("/ui/")
	for _, step := range []struct{ button, state string }{{"Drain agent e2e-agent", "DRAINING"}, {"Undrain agent e2e-agent", "READY"}} {
		sel := fmt.Sprintf(`button[aria-label=%q]`, step.button)
		adm.waitJS(time.Minute, "the button "+step.button, fmt.Sprintf(`document.querySelector(%q)`, sel))
		adm.run("click "+step.button, chromedp.Click(chromedp.CSS(sel)))
		adm.waitJS(time.Minute, "the agent "+step.state, fmt.Sprintf(`[...document.querySelectorAll("#agents tr")].some(r => r.children[0].textContent === "e2e-agent" && r.children[1].textContent === %q)`, step.state))
	}
}

// TestWebUILongLog loads the page of a build whose log has 200 000 lines:
// the page stays responsive because only the visible rows are in the DOM.
// Time to first paint and to the whole log are logged, not asserted.
func TestWebUILongLog(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	k := mustStartKilnd(t, t.TempDir())
	const n = 200000
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN seq 1 " + fmt.Sprint(n) + " | sed 's/^/long-log-" + uniq() + " /'\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "quiet", ctxDir)
	if r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	ids := kiln(t, k.addrs.GRPC, "ls", "--format", "{{.ID}}")
	id := strings.Fields(ids.stdout)[0]
	br := newUIBrowser(t, "http://"+k.addrs.HTTP)
	start := time.Now()
	br.open("/ui/builds/" + id)
	br.waitJS(2*time.Minute, "the first log rows painted", `document.querySelector("#log .ln")`)
	firstPaint := time.Since(start)
	br.waitJS(5*time.Minute, "the whole log loaded", `window.kilnUI && kilnUI.ended && kilnUI.lines.length >= `+fmt.Sprint(n))
	loaded := time.Since(start)
	var rows, lines int
	br.eval(`document.querySelectorAll("#log .ln").length`, &rows)
	br.eval(`kilnUI.lines.length`, &lines)
	if rows == 0 || rows > 500 {
		t.Errorf("%d log rows in the DOM for %d lines: want only the visible ones", rows, lines)
	}
	// Scroll to the middle and the end: the rows there are painted.
	for _, frac := range []float64{0.5, 1} {
		scrolled := time.Now()
		br.eval(fmt.Sprintf(`(() => { const l = document.querySelector("#log"); l.scrollTop = (l.scrollHeight - l.clientHeight) * %v; return true; })()`, frac), new(bool))
		br.waitJS(time.Minute, fmt.Sprintf("rows painted at %.0f%%", frac*100), fmt.Sprintf(`(() => { const l = document.querySelector("#log"); const top = l.scrollTop;
			return [...l.querySelectorAll(".ln")].some(r => parseFloat(r.style.top) >= top && parseFloat(r.style.top) < top + l.clientHeight); })()`))
		t.Logf("scroll to %.0f%%: rows painted after %v", frac*100, time.Since(scrolled).Round(time.Millisecond))
	}
	var last string
	br.eval(`[...document.querySelectorAll("#log .ln .lt")].map(e => e.textContent).filter(t => t.includes("long-log-")).pop() || ""`, &last)
	if !regexp.MustCompile(` 200000$`).MatchString(last) {
		t.Errorf("at the end of the log the last row is %q, want line 200000", last)
	}
	cliStart := time.Now()
	if r := kiln(t, k.addrs.GRPC, "logs", "--progress", "json", id); r.code != 0 {
		t.Fatalf("kiln logs: %s", r)
	}
	t.Logf("kiln logs --progress json of the same build: %v", time.Since(cliStart).Round(time.Millisecond))
	t.Logf("200000-line log: first rows painted after %v, whole log loaded after %v, %d rows in the DOM", firstPaint.Round(time.Millisecond), loaded.Round(time.Millisecond), rows)
}
