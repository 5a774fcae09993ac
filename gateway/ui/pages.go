package ui

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

var funcs = template.FuncMap{
	"state": stateName,
	"ago": func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return ""
		}
		return ts.AsTime().UTC().Format("2006-01-02 15:04:05")
	},
	"duration": buildDuration,
	"lower":    strings.ToLower,
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// stateName is a build state as kiln ls prints it (SUCCEEDED, …).
func stateName(s kilnv1.BuildState) string {
	return strings.TrimPrefix(s.String(), "BUILD_STATE_")
}

// buildDuration is how long a build ran (so far), rounded.
func buildDuration(b *kilnv1.Build) string {
	start := b.GetStartedAt()
	if start == nil {
		return ""
	}
	end := time.Now()
	if b.FinishedAt != nil {
		end = b.FinishedAt.AsTime()
	}
	return end.Sub(start.AsTime()).Round(100 * time.Millisecond).String()
}

// pageData is what every template gets.
type pageData struct {
	Title string
	ID    Identity
	CSRF  string
	Body  any
}

func (h *Handler) render(w http.ResponseWriter, r *request, name, title string, body any) {
	d := pageData{Title: title, Body: body}
	if r != nil {
		d.ID, d.CSRF = r.id, r.sess.csrf
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pages.ExecuteTemplate(w, name, d); err != nil {
		h.o.Logger.Warn("ui template", "page", name, "err", err)
	}
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	if h.b.Local() {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	h.render(w, nil, "login", "Log in", map[string]string{"Next": safeNext(r.URL.Query().Get("next")), "Error": ""})
}

// safeNext keeps a post-login redirect on the UI.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/ui/"
	}
	return next
}

// login exchanges a tenant token for a session cookie. A login from
// another site is refused (its Origin), so no one logs a browser in as
// them.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r) {
		http.Error(w, "login from another site refused", http.StatusForbidden)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	token := strings.TrimSpace(r.PostFormValue("token"))
	id, err := h.b.Authenticate(r.Context(), token)
	if err != nil || token == "" && !id.Local {
		w.WriteHeader(http.StatusUnauthorized)
		h.render(w, nil, "login", "Log in", map[string]string{"Next": next, "Error": "That token matches no tenant of this farm."})
		return
	}
	key, _ := h.sessions.create(id)
	setCookie(w, r, key, int(sessionTTL.Seconds()))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
		return
	}
	se := h.sessions.get(c.Value)
	if se == nil || !csrfOK(r, se) {
		http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
		return
	}
	h.sessions.end(c.Value)
	setCookie(w, r, "", -1)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func (h *Handler) overview(w http.ResponseWriter, r *request) {
	h.render(w, r, "overview", "Farm overview", nil)
}

// listView is the build list's filters and page.
type listView struct {
	Tenant, Repository, Tag, Agent, State, Since string
	States                                       []string
	Builds                                       []*kilnv1.Build
	Next                                         string
	Error                                        string
}

var allStates = []string{"QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}

// listRequest is kiln ls's request from the list page's query.
func listRequest(q url.Values) (*kilnv1.ListBuildsRequest, error) {
	req := &kilnv1.ListBuildsRequest{
		Tenant: q.Get("tenant"), Repository: q.Get("repository"), Tag: q.Get("tag"), Agent: q.Get("agent"),
		PageToken: q.Get("page_token"), PageSize: 50,
	}
	for _, s := range q["state"] {
		if s == "" {
			continue
		}
		v, ok := kilnv1.BuildState_value["BUILD_STATE_"+strings.ToUpper(s)]
		if !ok {
			return nil, fmt.Errorf("state %q is not one of %s", s, strings.Join(allStates, ", "))
		}
		req.States = append(req.States, kilnv1.BuildState(v))
	}
	if s := q.Get("since"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("since %q is not a duration such as 30m or 24h", s)
		}
		req.Since = timestamppb.New(time.Now().Add(-d))
	}
	return req, nil
}

func (h *Handler) buildList(w http.ResponseWriter, r *request) {
	q := r.URL.Query()
	v := listView{Tenant: q.Get("tenant"), Repository: q.Get("repository"), Tag: q.Get("tag"), Agent: q.Get("agent"),
		State: q.Get("state"), Since: q.Get("since"), States: allStates}
	req, err := listRequest(q)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		v.Error = err.Error()
		h.render(w, r, "builds", "Builds", v)
		return
	}
	resp, err := h.b.ListBuilds(r.Context(), r.id, req)
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	v.Builds = resp.Builds
	if resp.NextPageToken != "" {
		q.Set("page_token", resp.NextPageToken)
		v.Next = "/ui/builds?" + q.Encode()
	}
	h.render(w, r, "builds", "Builds", v)
}

func (h *Handler) buildPage(w http.ResponseWriter, r *request) {
	b, err := h.b.GetBuild(r.Context(), r.id, r.PathValue("id"))
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	h.render(w, r, "build", "Build "+b.Id, b)
}

func (h *Handler) trendsPage(w http.ResponseWriter, r *request) {
	h.render(w, r, "trends", "Trends", map[string]string{"Repository": r.URL.Query().Get("repository")})
}

// back redirects a plain form post to the page it came from (fetch posts
// get the JSON answer).
func (h *Handler) answer(w http.ResponseWriter, r *request, to string, m proto.Message) {
	if r.Header.Get("X-CSRF-Token") != "" {
		writeProto(w, m)
		return
	}
	http.Redirect(w, r.Request, to, http.StatusSeeOther)
}

func (h *Handler) cancel(w http.ResponseWriter, r *request) {
	b, err := h.b.CancelBuild(r.Context(), r.id, r.PathValue("id"))
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	h.answer(w, r, "/ui/builds/"+b.Id, b)
}

func (h *Handler) retry(w http.ResponseWriter, r *request) {
	b, err := h.b.RetryBuild(r.Context(), r.id, r.PathValue("id"))
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	h.answer(w, r, "/ui/builds/"+b.Id, b)
}

func (h *Handler) drain(w http.ResponseWriter, r *request) {
	if !r.id.Admin {
		http.Error(w, "draining an agent needs an admin tenant", http.StatusForbidden)
		return
	}
	undrain := r.PostFormValue("undrain") == "true"
	if err := h.b.DrainAgent(r.Context(), r.id, r.PathValue("name"), undrain); err != nil {
		h.fail(w, r.Request, err)
		return
	}
	h.answer(w, r, "/ui/", &kilnv1.DrainAgentResponse{})
}

var marshal = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false}

func writeProto(w http.ResponseWriter, m proto.Message) {
	data, err := marshal.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(data)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// buildJSON is a build's record and the links the page shows.
func (h *Handler) buildJSON(w http.ResponseWriter, r *request) {
	b, err := h.b.GetBuild(r.Context(), r.id, r.PathValue("id"))
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	data, err := marshal.Marshal(b)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, map[string]any{"build": json.RawMessage(data), "trace_url": h.traceURL(b), "admin": r.id.Admin})
}

// traceURL is the build's trace link from the --ui-trace-url template and
// the W3C traceparent the build record carries ("" without either).
func (h *Handler) traceURL(b *kilnv1.Build) string {
	tp := b.GetTraceContext()["traceparent"]
	parts := strings.Split(tp, "-")
	if h.o.TraceURL == "" || len(parts) != 4 || len(parts[1]) != 32 || strings.Trim(parts[1], "0") == "" {
		return ""
	}
	return strings.ReplaceAll(h.o.TraceURL, "{trace_id}", parts[1])
}

// overviewJSON is the farm overview: queue, running builds and recent
// failures of the tenants the caller sees, and (admins) the agents.
func (h *Handler) overviewJSON(w http.ResponseWriter, r *request) {
	type tenantQueue struct {
		Tenant  string  `json:"tenant"`
		Queued  int     `json:"queued"`
		Running int     `json:"running"`
		MaxWait float64 `json:"max_wait_seconds"`
		AvgWait float64 `json:"avg_wait_seconds"`
	}
	out := struct {
		Queues   []tenantQueue     `json:"queues"`
		Running  []json.RawMessage `json:"running"`
		Failures []json.RawMessage `json:"failures"`
		Agents   []json.RawMessage `json:"agents"`
		Admin    bool              `json:"admin"`
		Now      time.Time         `json:"now"`
	}{Admin: r.id.Admin, Now: time.Now().UTC(), Queues: []tenantQueue{}, Running: []json.RawMessage{}, Failures: []json.RawMessage{}, Agents: []json.RawMessage{}}
	tenants := []string{r.id.Tenant}
	if r.id.Admin {
		tenants = h.b.Tenants()
	}
	var failures []*kilnv1.Build
	for _, t := range tenants {
		list := func(size int32, states ...kilnv1.BuildState) ([]*kilnv1.Build, bool) {
			resp, err := h.b.ListBuilds(r.Context(), r.id, &kilnv1.ListBuildsRequest{Tenant: t, States: states, PageSize: size})
			if err != nil {
				h.fail(w, r.Request, err)
				return nil, false
			}
			return resp.Builds, true
		}
		queued, ok := list(1000, kilnv1.BuildState_BUILD_STATE_QUEUED)
		if !ok {
			return
		}
		running, ok := list(1000, kilnv1.BuildState_BUILD_STATE_ASSIGNED, kilnv1.BuildState_BUILD_STATE_RUNNING)
		if !ok {
			return
		}
		failed, ok := list(10, kilnv1.BuildState_BUILD_STATE_FAILED)
		if !ok {
			return
		}
		q := tenantQueue{Tenant: t, Queued: len(queued), Running: len(running)}
		for _, b := range queued {
			since := b.GetQueuedAt()
			if since == nil {
				since = b.GetCreatedAt()
			}
			wait := time.Since(since.AsTime()).Seconds()
			q.MaxWait = max(q.MaxWait, wait)
			q.AvgWait += wait / float64(len(queued))
		}
		out.Queues = append(out.Queues, q)
		for _, b := range running {
			out.Running = append(out.Running, mustJSON(b))
		}
		failures = append(failures, failed...)
	}
	slices.SortFunc(failures, func(a, b *kilnv1.Build) int { return b.GetFinishedAt().AsTime().Compare(a.GetFinishedAt().AsTime()) })
	for _, b := range failures[:min(10, len(failures))] {
		out.Failures = append(out.Failures, mustJSON(b))
	}
	if r.id.Admin {
		agents, err := h.b.ListAgents(r.Context(), r.id)
		if err != nil {
			h.fail(w, r.Request, err)
			return
		}
		for _, a := range agents {
			out.Agents = append(out.Agents, mustJSON(a))
		}
	}
	writeJSON(w, out)
}

func mustJSON(m proto.Message) json.RawMessage {
	data, err := marshal.Marshal(m)
	if err != nil {
		return json.RawMessage(`{}`)
	}
	return data
}
