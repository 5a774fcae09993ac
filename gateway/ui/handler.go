// Package ui is the gateway's web UI, served under /ui/ on its HTTP port:
// the farm overview, the build list, each build's page with its live log,
// and per-repository trends. Pages are HTML templates and plain
// JavaScript and CSS embedded in the binary (no framework, no CDN, no
// inline script or style, so the CSP needs no 'unsafe-inline').
//
// Every datum comes from the gateway's own RPC methods called in process
// (Backend), with the caller the session stands for: the UI shows a tenant
// what the gRPC API would, and live updates are WatchBuild's event stream
// relayed as Server-Sent Events.
package ui

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Identity is who a session stands for.
type Identity struct {
	Tenant string
	// Credential names the token the session was made from (never the
	// token): the session ends when the tenants file drops it.
	Credential string
	Admin      bool
	// Local is set in local mode (no tenants file): no login.
	Local bool
}

// Backend is the gateway as the UI uses it: its RPC methods in process,
// called as id.
type Backend interface {
	// Local reports local mode: no tenants file, no login.
	Local() bool
	// Authenticate returns the identity a tenant token stands for.
	Authenticate(ctx context.Context, token string) (Identity, error)
	// Refresh re-reads id against the tenants file in force: false once
	// its token is gone.
	Refresh(id Identity) (Identity, bool)
	// Tenants names the farm's tenants (an admin's overview covers each).
	Tenants() []string
	ListBuilds(ctx context.Context, id Identity, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error)
	GetBuild(ctx context.Context, id Identity, buildID string) (*kilnv1.Build, error)
	CancelBuild(ctx context.Context, id Identity, buildID string) (*kilnv1.Build, error)
	RetryBuild(ctx context.Context, id Identity, buildID string) (*kilnv1.Build, error)
	ListAgents(ctx context.Context, id Identity) ([]*kilnv1.Agent, error)
	DrainAgent(ctx context.Context, id Identity, name string, undrain bool) error
	// WatchBuild relays the build's events from sequence from (WatchBuild's
	// from_sequence) to send, until its finished event or ctx's end.
	WatchBuild(ctx context.Context, id Identity, buildID string, from uint64, send func(*kilnv1.BuildEvent) error) error
}

// Options configure the UI.
type Options struct {
	// TraceURL is the trace link's template: {trace_id} is replaced.
	TraceURL string
	Logger   *slog.Logger
}

//go:embed assets templates
var files embed.FS

var pages = template.Must(template.New("").Funcs(funcs).ParseFS(files, "templates/*.html"))

// Handler serves the UI; mount it at /ui/.
type Handler struct {
	b        Backend
	o        Options
	sessions *sessions
	mux      *http.ServeMux
}

// New returns the UI over b.
func New(b Backend, o Options) *Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &Handler{b: b, o: o, sessions: newSessions(), mux: http.NewServeMux()}
	static, _ := fs.Sub(files, "assets")
	h.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	h.mux.HandleFunc("GET /ui/login", h.loginPage)
	h.mux.HandleFunc("POST /ui/login", h.login)
	h.mux.HandleFunc("POST /ui/logout", h.logout)
	h.mux.HandleFunc("GET /ui/{$}", h.page(h.overview))
	h.mux.HandleFunc("GET /ui/builds", h.page(h.buildList))
	h.mux.HandleFunc("GET /ui/builds/{id}", h.page(h.buildPage))
	h.mux.HandleFunc("GET /ui/trends", h.page(h.trendsPage))
	h.mux.HandleFunc("POST /ui/builds/{id}/cancel", h.post(h.cancel))
	h.mux.HandleFunc("POST /ui/builds/{id}/retry", h.post(h.retry))
	h.mux.HandleFunc("POST /ui/agents/{name}/drain", h.post(h.drain))
	h.mux.HandleFunc("GET /ui/api/overview", h.api(h.overviewJSON))
	h.mux.HandleFunc("GET /ui/api/builds/{id}", h.api(h.buildJSON))
	h.mux.HandleFunc("GET /ui/api/builds/{id}/events", h.api(h.events))
	h.mux.HandleFunc("GET /ui/api/trends", h.api(h.trendsJSON))
	h.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	return h
}

// ServeHTTP sets the security headers on every response, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
		hd.Set("Cache-Control", "no-store")
	}
	h.mux.ServeHTTP(w, r)
}

// request is one authenticated request.
type request struct {
	*http.Request
	id   Identity
	sess *session
}

// authed returns the request's session, refreshed against the tenants
// file; in local mode a session is made on the first request. nil: the
// caller must log in.
func (h *Handler) authed(w http.ResponseWriter, r *http.Request) *request {
	if c, err := r.Cookie(sessionCookie); err == nil {
		if se := h.sessions.get(c.Value); se != nil {
			if id, ok := h.b.Refresh(se.id); ok {
				return &request{Request: r, id: id, sess: se}
			}
			h.sessions.end(c.Value)
		}
	}
	if !h.b.Local() {
		return nil
	}
	id, err := h.b.Authenticate(r.Context(), "")
	if err != nil {
		return nil
	}
	key, se := h.sessions.create(id)
	setCookie(w, r, key, int(sessionTTL.Seconds()))
	return &request{Request: r, id: id, sess: se}
}

// page wraps an HTML page: without a session, to the login form.
func (h *Handler) page(f func(w http.ResponseWriter, r *request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rq := h.authed(w, r)
		if rq == nil {
			http.Redirect(w, r, "/ui/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		f(w, rq)
	}
}

// api wraps a JSON or SSE endpoint: without a session, 401.
func (h *Handler) api(f func(w http.ResponseWriter, r *request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rq := h.authed(w, r)
		if rq == nil {
			http.Error(w, "log in at /ui/login", http.StatusUnauthorized)
			return
		}
		f(w, rq)
	}
}

// post wraps a state-changing form: a session and its CSRF token are
// required (403 without the token).
func (h *Handler) post(f func(w http.ResponseWriter, r *request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		rq := h.authed(w, r)
		if rq == nil {
			http.Error(w, "log in at /ui/login", http.StatusUnauthorized)
			return
		}
		if !csrfOK(r, rq.sess) {
			http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
			return
		}
		f(w, rq)
	}
}

// fail answers err (a gRPC status from the backend) with its HTTP
// equivalent and its message, which the gateway words for people.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := status.FromError(err)
	code := http.StatusInternalServerError
	switch st.Code() {
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.InvalidArgument, codes.OutOfRange:
		code = http.StatusBadRequest
	case codes.PermissionDenied:
		code = http.StatusForbidden
	case codes.Unauthenticated:
		code = http.StatusUnauthorized
	case codes.FailedPrecondition, codes.AlreadyExists, codes.Aborted:
		code = http.StatusConflict
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		code = http.StatusServiceUnavailable
	case codes.Canceled:
		return
	default:
		h.o.Logger.WarnContext(r.Context(), "ui request failed", "path", r.URL.Path, "err", err)
	}
	http.Error(w, st.Message(), code)
}
