package ui

import (
	"net/url"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestTraceURL(t *testing.T) {
	h := &Handler{o: Options{TraceURL: "http://jaeger:16686/trace/{trace_id}"}}
	b := &kilnv1.Build{TraceContext: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	if got := h.traceURL(b); got != "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace link %q", got)
	}
	for _, tp := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"} {
		if got := h.traceURL(&kilnv1.Build{TraceContext: map[string]string{"traceparent": tp}}); got != "" {
			t.Errorf("traceparent %q gave link %q, want none", tp, got)
		}
	}
	if got := (&Handler{}).traceURL(b); got != "" {
		t.Errorf("no --ui-trace-url gave link %q", got)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/ui/builds?state=FAILED": "/ui/builds?state=FAILED",
		"":                        "/ui/",
		"//evil.example/ui/":      "/ui/",
		"https://evil.example/":   "/ui/",
		"/ui/\\evil":              "/ui/",
		"/metrics":                "/ui/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSessionsExpire(t *testing.T) {
	s := newSessions()
	now := time.Unix(1e9, 0)
	s.now = func() time.Time { return now }
	key, se := s.create(Identity{Tenant: "team-a"})
	if s.get(key) != se || se.csrf == "" || se.csrf == key {
		t.Fatal("a new session is not found, or has no CSRF token of its own")
	}
	now = now.Add(sessionTTL + time.Second)
	if s.get(key) != nil {
		t.Fatal("an expired session is still found")
	}
	if s.get("forged") != nil {
		t.Fatal("an unknown key found a session")
	}
}

func TestListRequest(t *testing.T) {
	req, err := listRequest(url.Values{"state": {"failed", "RUNNING"}, "repository": {"team/app"}, "since": {"24h"}})
	if err != nil || len(req.States) != 2 || req.States[0] != kilnv1.BuildState_BUILD_STATE_FAILED || req.Repository != "team/app" || req.Since == nil {
		t.Fatalf("listRequest: %v, %v", req, err)
	}
	for _, q := range []url.Values{{"state": {"DONE"}}, {"since": {"yesterday"}}, {"since": {"-1h"}}} {
		if _, err := listRequest(q); err == nil {
			t.Errorf("listRequest(%v) accepted", q)
		}
	}
}
