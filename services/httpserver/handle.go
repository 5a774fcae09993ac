package httpserver

import "net/http"

// Handle serves pattern with h beside the health and metrics handlers
// (the gateway's web UI under /ui/). Call it before Serve.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.srv.Handler.(*http.ServeMux).Handle(pattern, h)
}
