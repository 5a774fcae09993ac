package gateway

import (
	"bufio"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/tenants"
)

// uiServer serves g's web UI on a loopback HTTP server.
func uiServer(t *testing.T, g *Gateway) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/ui/", g.UI(UIFlags{TraceURL: "http://jaeger.example/trace/{trace_id}"}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// uiClient is a browser-like client: a cookie jar, no redirects followed.
type uiClient struct {
	t    *testing.T
	base string
	c    *http.Client
	csrf string
}

func newUIClient(t *testing.T, srv *httptest.Server) *uiClient {
	jar, _ := cookiejar.New(nil)
	return &uiClient{t: t, base: srv.URL, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]*)">`)

func (u *uiClient) do(method, path string, form url.Values, header http.Header) (*http.Response, string) {
	u.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(u.t.Context(), method, u.base+path, body)
	if err != nil {
		u.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := u.c.Do(req)
	if err != nil {
		u.t.Fatalf("%s %s: %v", method, path, err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := csrfMeta.FindStringSubmatch(string(data)); m != nil && m[1] != "" {
		u.csrf = m[1]
	}
	return resp, string(data)
}

func (u *uiClient) get(path string) (*http.Response, string) { return u.do("GET", path, nil, nil) }

func (u *uiClient) login(token string) {
	u.t.Helper()
	resp, body := u.do("POST", "/ui/login", url.Values{"token": {token}, "next": {"/ui/builds"}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/builds" {
		u.t.Fatalf("login: %s\n%s", resp.Status, body)
	}
	if resp, body := u.get("/ui/builds"); resp.StatusCode != http.StatusOK {
		u.t.Fatalf("build list after login: %s\n%s", resp.Status, body)
	}
}

func wantStatus(t *testing.T, what string, resp *http.Response, body string, code int) {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("%s: status %s, want %d\n%s", what, resp.Status, code, body)
	}
}

func TestUILoginSessionAndHeaders(t *testing.T) {
	f := startAuthFarm(t)
	srv := uiServer(t, f.g)
	u := newUIClient(t, srv)

	resp, body := u.get("/ui/builds")
	wantStatus(t, "build list without a session", resp, body, http.StatusSeeOther)
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/ui/login?next=") {
		t.Fatalf("redirected to %q, want the login form", loc)
	}
	for _, h := range []struct{ name, want string }{
		{"Content-Security-Policy", "default-src 'self'"},
		{"Content-Security-Policy", "frame-ancestors 'none'"},
		{"X-Frame-Options", "DENY"},
		{"X-Content-Type-Options", "nosniff"},
		{"Referrer-Policy", "same-origin"},
	} {
		if got := resp.Header.Get(h.name); !strings.Contains(got, h.want) {
			t.Errorf("header %s = %q, want it to hold %q", h.name, got, h.want)
		}
	}
	if strings.Contains(resp.Header.Get("Content-Security-Policy"), "unsafe-inline") {
		t.Error("the CSP allows unsafe-inline")
	}
	resp, body = u.get("/ui/api/overview")
	wantStatus(t, "API without a session", resp, body, http.StatusUnauthorized)

	resp, body = u.do("POST", "/ui/login", url.Values{"token": {"kiln_notatoken000000000000000000000000000000000"}}, nil)
	wantStatus(t, "login with an unknown token", resp, body, http.StatusUnauthorized)
	if !strings.Contains(body, "matches no tenant") || strings.Contains(body, "kiln_notatoken") {
		t.Fatalf("bad login page does not say why, or echoes the token:\n%s", body)
	}
	resp, body = u.do("POST", "/ui/login", url.Values{"token": {tokenA}}, http.Header{"Origin": {"https://evil.example"}})
	wantStatus(t, "login from another site", resp, body, http.StatusForbidden)

	resp, _ = u.do("POST", "/ui/login", url.Values{"token": {tokenA}, "next": {"//evil.example/"}}, nil)
	if loc := resp.Header.Get("Location"); loc != "/ui/" {
		t.Fatalf("login redirected to %q: an open redirect", loc)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "kiln_session" {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || strings.Contains(cookie.Value, tokenA) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not the token", cookie)
	}
	resp, body = u.get("/ui/")
	wantStatus(t, "overview", resp, body, http.StatusOK)
	if !strings.Contains(body, "team-a") || u.csrf == "" {
		t.Fatalf("overview does not name the tenant or carry a CSRF token:\n%s", body)
	}
	// Logout needs the CSRF token, then ends the session.
	resp, body = u.do("POST", "/ui/logout", url.Values{}, nil)
	wantStatus(t, "logout without CSRF", resp, body, http.StatusForbidden)
	resp, body = u.do("POST", "/ui/logout", url.Values{"csrf": {u.csrf}}, nil)
	wantStatus(t, "logout", resp, body, http.StatusSeeOther)
	resp, body = u.get("/ui/api/overview")
	wantStatus(t, "API after logout", resp, body, http.StatusUnauthorized)
}

func TestUITenantIsolationAndCSRF(t *testing.T) {
	f := startAuthFarm(t)
	srv := uiServer(t, f.g)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	bBuild := f.start(t, c, tokenB, "registry.example.com/team-b/app:1")
	aBuild := f.start(t, c, tokenA, "registry.example.com/team-a/app:1")

	a := newUIClient(t, srv)
	a.login(tokenA)
	for _, path := range []string{"/ui/builds/" + bBuild.Id, "/ui/api/builds/" + bBuild.Id, "/ui/api/builds/" + bBuild.Id + "/events"} {
		resp, body := a.get(path)
		wantStatus(t, "team-a opening team-b's "+path, resp, body, http.StatusNotFound)
		if strings.Contains(body, "team-b") {
			t.Fatalf("the 404 of %s tells team-b's build apart:\n%s", path, body)
		}
	}
	resp, body := a.get("/ui/builds")
	if !strings.Contains(body, aBuild.Id) || strings.Contains(body, bBuild.Id) {
		t.Fatalf("team-a's build list: want only its own build %s\n%s", aBuild.Id, body)
	}
	resp, body = a.get("/ui/builds?tenant=team-b")
	wantStatus(t, "team-a listing team-b's builds", resp, body, http.StatusForbidden)
	resp, body = a.get("/ui/builds?state=BOGUS")
	wantStatus(t, "a bad state filter", resp, body, http.StatusBadRequest)

	// A POST without the CSRF token changes nothing.
	resp, body = a.get("/ui/builds/" + aBuild.Id)
	wantStatus(t, "team-a's build page", resp, body, http.StatusOK)
	resp, body = a.do("POST", "/ui/builds/"+aBuild.Id+"/cancel", url.Values{}, nil)
	wantStatus(t, "cancel without CSRF", resp, body, http.StatusForbidden)
	resp, body = a.do("POST", "/ui/builds/"+aBuild.Id+"/cancel", url.Values{"csrf": {"forged"}}, nil)
	wantStatus(t, "cancel with a wrong CSRF token", resp, body, http.StatusForbidden)
	got, err := c.GetBuild(as(t.Context(), tokenA), &kilnv1.GetBuildRequest{BuildId: aBuild.Id})
	if err != nil || got.Build.State != kilnv1.BuildState_BUILD_STATE_QUEUED || got.Build.CancelRequested {
		t.Fatalf("after refused cancels the build is %v (%v), want QUEUED", got.GetBuild().GetState(), err)
	}
	resp, body = a.do("POST", "/ui/builds/"+bBuild.Id+"/cancel", url.Values{"csrf": {a.csrf}}, nil)
	wantStatus(t, "team-a cancelling team-b's build", resp, body, http.StatusNotFound)
	resp, body = a.do("POST", "/ui/agents/agent-1/drain", url.Values{"csrf": {a.csrf}}, nil)
	wantStatus(t, "team-a draining an agent", resp, body, http.StatusForbidden)

	resp, body = a.do("POST", "/ui/builds/"+aBuild.Id+"/cancel", nil, http.Header{"X-Csrf-Token": {a.csrf}})
	wantStatus(t, "cancel with the CSRF header", resp, body, http.StatusOK)
	if !strings.Contains(body, "BUILD_STATE_CANCELLED") {
		t.Fatalf("cancel answered %s, want the build CANCELLED", body)
	}

	// Retry, as a plain form: a new build, and the browser sent to its page.
	resp, body = a.do("POST", "/ui/builds/"+aBuild.Id+"/retry", url.Values{"csrf": {a.csrf}}, nil)
	wantStatus(t, "retry", resp, body, http.StatusSeeOther)
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "/ui/builds/") || loc == "/ui/builds/"+aBuild.Id {
		t.Fatalf("retry sent the browser to %q, want the new build's page", loc)
	}
	if resp, body := a.get(loc); resp.StatusCode != http.StatusOK || !strings.Contains(body, "QUEUED") {
		t.Fatalf("the retried build's page: %s\n%s", resp.Status, body)
	}

	// The admin sees team-b's build, page and events.
	adm := newUIClient(t, srv)
	adm.login(tokenAdmin)
	resp, body = adm.get("/ui/builds/" + bBuild.Id)
	wantStatus(t, "admin opening team-b's build", resp, body, http.StatusOK)
	resp, body = adm.get("/ui/builds?tenant=team-b")
	if !strings.Contains(body, bBuild.Id) {
		t.Fatalf("admin's list of team-b's builds lacks %s:\n%s", bBuild.Id, body)
	}

	// Revoking the token ends the session.
	set, err := tenants.Parse(f.tenantsYAML(tokenA2, tokenB, tokenAdmin))
	if err != nil {
		t.Fatal(err)
	}
	f.g.ReloadTenants(set)
	resp, body = a.get("/ui/api/overview")
	wantStatus(t, "team-a's session after its token's revocation", resp, body, http.StatusUnauthorized)
}

func TestUIEventsResumeWithLastEventID(t *testing.T) {
	f := startAuthFarm(t)
	srv := uiServer(t, f.g)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	b := f.start(t, c, tokenA, "registry.example.com/team-a/app:1")
	if _, err := c.CancelBuild(as(t.Context(), tokenA), &kilnv1.CancelBuildRequest{BuildId: b.Id}); err != nil {
		t.Fatal(err)
	}
	u := newUIClient(t, srv)
	u.login(tokenA)
	read := func(lastID string) (ids []string, ended bool) {
		h := http.Header{}
		if lastID != "" {
			h.Set("Last-Event-ID", lastID)
		}
		req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/ui/api/builds/"+b.Id+"/events", nil)
		req.Header = h
		resp, err := u.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("events: %s %s", resp.Status, resp.Header.Get("Content-Type"))
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if id, ok := strings.CutPrefix(line, "id: "); ok {
				ids = append(ids, id)
			}
			if line == "event: end" {
				ended = true
			}
		}
		return ids, ended
	}
	all, ended := read("")
	if !ended || len(all) < 2 || all[0] != "1" {
		t.Fatalf("events of a cancelled build: ids %v, ended %v; want 1… and an end", all, ended)
	}
	rest, ended := read("1")
	if !ended || strings.Join(rest, ",") != strings.Join(all[1:], ",") {
		t.Fatalf("resumed after 1: ids %v, want %v", rest, all[1:])
	}
}

func TestUILocalModeNeedsNoLogin(t *testing.T) {
	g, err := New(t.Context(), Config{Conn: bustest.Conn(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := uiServer(t, g)
	u := newUIClient(t, srv)
	resp, body := u.get("/ui/builds")
	wantStatus(t, "local mode build list", resp, body, http.StatusOK)
	if u.csrf == "" {
		t.Fatal("local mode page carries no CSRF token")
	}
	resp, body = u.get("/ui/api/overview")
	wantStatus(t, "local mode overview", resp, body, http.StatusOK)
	resp, body = u.do("POST", "/ui/agents/agent-1/drain", url.Values{}, nil)
	wantStatus(t, "local mode drain without CSRF", resp, body, http.StatusForbidden)
	resp, body = u.get("/ui/login")
	wantStatus(t, "local mode login form", resp, body, http.StatusSeeOther)
}
