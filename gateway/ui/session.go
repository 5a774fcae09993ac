package ui

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Sessions are server-side: the cookie holds a random id (32 bytes), the
// server holds the identity it stands for and its CSRF token. A session
// ends at logout, after sessionTTL, or when the token it was made from
// leaves the tenants file (Backend.Refresh on every request). The token
// itself is never kept. Sessions live in the gateway's memory: a restart,
// or another gateway replica, asks the user to log in again.
const (
	sessionCookie = "kiln_session"
	sessionTTL    = 12 * time.Hour
	// maxSessions bounds the memory sessions take; a login beyond it
	// ends the session nearest its expiry.
	maxSessions = 10000
)

type session struct {
	id      Identity
	csrf    string
	expires time.Time
}

type sessions struct {
	mu   sync.Mutex
	byID map[string]*session // guarded by mu
	now  func() time.Time
}

func newSessions() *sessions { return &sessions{byID: map[string]*session{}, now: time.Now} }

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for id and returns its cookie value.
func (s *sessions) create(id Identity) (string, *session) {
	key := randomToken()
	se := &session{id: id, csrf: randomToken(), expires: s.now().Add(sessionTTL)}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, v := range s.byID {
		if now.After(v.expires) {
			delete(s.byID, k)
		}
	}
	if len(s.byID) >= maxSessions {
		var oldest string
		for k, v := range s.byID {
			if oldest == "" || v.expires.Before(s.byID[oldest].expires) {
				oldest = k
			}
		}
		delete(s.byID, oldest)
	}
	s.byID[key] = se
	return key, se
}

// get returns the live session of key, or nil.
func (s *sessions) get(key string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.byID[key]
	if se == nil {
		return nil
	}
	if s.now().After(se.expires) {
		delete(s.byID, key)
		return nil
	}
	return se
}

func (s *sessions) end(key string) {
	s.mu.Lock()
	delete(s.byID, key)
	s.mu.Unlock()
}

// setCookie sends the session cookie: HTTP-only, SameSite=Strict, Secure
// when the request came over TLS (or through a proxy that says it did).
func setCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/ui/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https",
	})
}

// csrfOK reports whether r carries the session's CSRF token, in the
// X-CSRF-Token header (fetch) or the csrf form field (plain forms).
func csrfOK(r *http.Request, se *session) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(se.csrf)) == 1
}
