package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// sseFlushEvery is how often a build's event stream is flushed to the
// browser (and pending log lines written): a replayed log of 200 000 lines
// goes out in a few large writes rather than one per line.
const sseFlushEvery = 50 * time.Millisecond

// events relays WatchBuild as Server-Sent Events (sseWriter): each
// message's id is its event's sequence (a batch of log lines: its last
// line's), so a reconnecting EventSource resumes after Last-Event-ID
// (or ?from=N starts at sequence N). After the finished event comes
// "event: end", and the stream closes.
func (h *Handler) events(w http.ResponseWriter, r *request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	from := uint64(1)
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "Last-Event-ID must be an event sequence", http.StatusBadRequest)
			return
		}
		from = n + 1
	} else if s := r.URL.Query().Get("from"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "from must be an event sequence", http.StatusBadRequest)
			return
		}
		from = n
	}
	id := r.PathValue("id")
	// Refuse another tenant's build (404) before answering 200.
	if _, err := h.b.GetBuild(r.Context(), r.id, id); err != nil {
		h.fail(w, r.Request, err)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	out := &sseWriter{w: w}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // flushes what send wrote, until the stream ends
		defer wg.Done()
		t := time.NewTicker(sseFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.mu.Lock()
				out.writeLogs()
				if out.dirty {
					flusher.Flush()
					out.dirty = false
				}
				out.mu.Unlock()
			}
		}
	}()
	send := out.send
	err := h.b.WatchBuild(ctx, r.id, id, from, send)
	cancel()
	wg.Wait()
	out.mu.Lock()
	out.writeLogs()
	out.mu.Unlock()
	if err != nil {
		if status.Code(err) == codes.Canceled || r.Context().Err() != nil {
			return
		}
		// The browser's EventSource reconnects with Last-Event-ID.
		h.o.Logger.InfoContext(r.Context(), "ui event stream ended", "build_id", id, "err", err)
		fmt.Fprintf(w, "event: interrupted\ndata: %q\n\n", status.Convert(err).Message())
		flusher.Flush()
		return
	}
	fmt.Fprint(w, "event: end\ndata: {}\n\n")
	flusher.Flush()
}

// maxLogBatch bounds the log lines of one "logs" message.
const maxLogBatch = 2000

// sseWriter writes a build's events as Server-Sent Events. Consecutive log
// lines go out together as one "logs" message ({"first": sequence of the
// first, "lines": [text…]}, its id the last line's sequence), so the
// browser handles a replayed log of 200 000 lines as a few hundred
// messages; every other event is one message whose data is the event.
type sseWriter struct {
	w     io.Writer
	mu    sync.Mutex
	dirty bool   // written since the last flush; guarded by mu
	first uint64 // sequence of logs[0]; guarded by mu
	logs  []string
	err   error
}

func (s *sseWriter) send(ev *kilnv1.BuildEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := ev.GetLog(); l != nil {
		if len(s.logs) == 0 {
			s.first = ev.GetSequence()
		}
		s.logs = append(s.logs, l.GetText())
		if len(s.logs) >= maxLogBatch {
			s.writeLogs()
		}
		return s.err
	}
	s.writeLogs()
	data, err := marshal.Marshal(ev)
	if err != nil {
		return err
	}
	s.write("id: %d\ndata: %s\n\n", ev.GetSequence(), data)
	return s.err
}

// writeLogs writes the pending log lines; mu must be held.
func (s *sseWriter) writeLogs() {
	if len(s.logs) == 0 {
		return
	}
	data, err := json.Marshal(struct {
		First uint64   `json:"first"`
		Lines []string `json:"lines"`
	}{s.first, s.logs})
	if err != nil {
		s.err = err
		return
	}
	s.write("id: %d\nevent: logs\ndata: %s\n\n", s.first+uint64(len(s.logs))-1, data)
	s.logs = s.logs[:0]
}

func (s *sseWriter) write(format string, args ...any) {
	if s.err != nil {
		return
	}
	_, s.err = fmt.Fprintf(s.w, format, args...)
	s.dirty = true
}

// trendPoint is one build of a repository's trend.
type trendPoint struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	Created  string  `json:"created"`
	Seconds  float64 `json:"seconds"`
	Steps    int     `json:"steps"`
	Cached   int     `json:"cached"`
	RatioPct float64 `json:"cached_pct"`
}

// maxTrend bounds the builds of a trend.
const maxTrend = 200

// trendsJSON is a repository's last N finished builds (oldest first):
// duration and the share of steps the cache answered (the record's
// result, as kiln ls's CACHED column).
func (h *Handler) trendsJSON(w http.ResponseWriter, r *request) {
	q := r.URL.Query()
	n := 20
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > maxTrend {
			http.Error(w, fmt.Sprintf("n must be a number from 1 to %d", maxTrend), http.StatusBadRequest)
			return
		}
		n = v
	}
	repo := q.Get("repository")
	if repo == "" {
		http.Error(w, "name a repository (?repository=…)", http.StatusBadRequest)
		return
	}
	resp, err := h.b.ListBuilds(r.Context(), r.id, &kilnv1.ListBuildsRequest{Tenant: q.Get("tenant"), Repository: repo, PageSize: int32(n),
		States: []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED}})
	if err != nil {
		h.fail(w, r.Request, err)
		return
	}
	points := []trendPoint{}
	for i := len(resp.Builds) - 1; i >= 0; i-- {
		b := resp.Builds[i]
		p := trendPoint{ID: b.Id, State: stateName(b.State), Created: b.GetCreatedAt().AsTime().UTC().Format(time.RFC3339)}
		if b.StartedAt != nil && b.FinishedAt != nil {
			p.Seconds = b.FinishedAt.AsTime().Sub(b.StartedAt.AsTime()).Seconds()
		}
		p.Steps, p.Cached = int(b.GetResult().GetSteps()), int(b.GetResult().GetCachedSteps())
		if p.Steps > 0 {
			p.RatioPct = 100 * float64(p.Cached) / float64(p.Steps)
		}
		points = append(points, p)
	}
	writeJSON(w, map[string]any{"repository": repo, "builds": points})
}
