package kiln

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// eventLog is a build's event log served the way WatchBuild's contract
// says: from from_sequence on. Each connection ends after the number of
// events in cuts (then with cutErr), the last connection runs to the end.
type eventLog struct {
	events []*kilnv1.BuildEvent
	cuts   []int
	cutErr error
	// ignoreFrom replays from the start whatever from_sequence says.
	ignoreFrom bool
	// openErr fails every open.
	openErr error

	froms []uint64
}

func buildLog(n int) []*kilnv1.BuildEvent {
	var out []*kilnv1.BuildEvent
	for i := 1; i < n; i++ {
		out = append(out, &kilnv1.BuildEvent{Sequence: uint64(i), BuildId: "b1",
			Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: 1, Text: "line"}}})
	}
	return append(out, &kilnv1.BuildEvent{Sequence: uint64(n), BuildId: "b1",
		Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED}}})
}

func (l *eventLog) open(_ context.Context, from uint64) (eventStream, error) {
	l.froms = append(l.froms, from)
	if l.openErr != nil {
		return nil, l.openErr
	}
	start := int(from) - 1
	if l.ignoreFrom || start < 0 {
		start = 0
	}
	evs := l.events[start:]
	err := io.EOF
	if len(l.cuts) > 0 {
		n := min(l.cuts[0], len(evs))
		evs, err = evs[:n], l.cutErr
		l.cuts = l.cuts[1:]
	}
	return &sliceStream{events: evs, err: err}, nil
}

type sliceStream struct {
	events []*kilnv1.BuildEvent
	err    error
}

func (s *sliceStream) Recv() (*kilnv1.BuildEvent, error) {
	if len(s.events) == 0 {
		return nil, s.err
	}
	ev := s.events[0]
	s.events = s.events[1:]
	return ev, nil
}

func TestWatcherResumes(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "gateway restarting")
	tests := []struct {
		name      string
		log       *eventLog
		from      uint64
		limit     time.Duration // outage limit; backoff is 1s of the fake clock
		wantSeqs  []uint64
		wantFroms []uint64
		wantCode  codes.Code // OK: finished
	}{
		{
			name:  "unbroken stream",
			log:   &eventLog{events: buildLog(4)},
			limit: 3 * time.Second, wantSeqs: []uint64{1, 2, 3, 4}, wantFroms: []uint64{1},
		},
		{
			name:  "resumes after the last event seen",
			log:   &eventLog{events: buildLog(6), cuts: []int{2, 3}, cutErr: unavailable},
			limit: 3 * time.Second, wantSeqs: []uint64{1, 2, 3, 4, 5, 6}, wantFroms: []uint64{1, 3, 6},
		},
		{
			name:  "drops events replayed by a server that restarts the log",
			log:   &eventLog{events: buildLog(5), cuts: []int{3}, cutErr: unavailable, ignoreFrom: true},
			limit: 3 * time.Second, wantSeqs: []uint64{1, 2, 3, 4, 5}, wantFroms: []uint64{1, 4},
		},
		{
			name:  "stream that ends before the finished event is resumed",
			log:   &eventLog{events: buildLog(3), cuts: []int{1}, cutErr: io.EOF},
			limit: 3 * time.Second, wantSeqs: []uint64{1, 2, 3}, wantFroms: []uint64{1, 2},
		},
		{
			name:  "starts at from_sequence",
			log:   &eventLog{events: buildLog(5)},
			from:  4,
			limit: 3 * time.Second, wantSeqs: []uint64{4, 5}, wantFroms: []uint64{4},
		},
		{
			name:  "the outage limit counts only time without progress",
			log:   &eventLog{events: buildLog(5), cuts: []int{1, 1, 1, 1}, cutErr: unavailable},
			limit: time.Second, wantSeqs: []uint64{1, 2, 3, 4, 5}, wantFroms: []uint64{1, 2, 3, 4, 5},
		},
		{
			name: "gives up after the outage limit",
			log:  &eventLog{events: buildLog(5), cuts: []int{1, 0, 0, 0}, cutErr: unavailable},
			// Fails at 0s, 1s and 3s of the outage.
			limit: 2500 * time.Millisecond, wantSeqs: []uint64{1}, wantFroms: []uint64{1, 2, 2}, wantCode: codes.Unavailable,
		},
		{
			name:  "other errors are not retried",
			log:   &eventLog{events: buildLog(5), cuts: []int{2}, cutErr: status.Error(codes.NotFound, "no build b1")},
			limit: 3 * time.Second, wantSeqs: []uint64{1, 2}, wantFroms: []uint64{1}, wantCode: codes.NotFound,
		},
		{
			name:  "open failures count against the outage limit",
			log:   &eventLog{events: buildLog(2), openErr: unavailable},
			limit: 2500 * time.Millisecond, wantFroms: []uint64{1, 1, 1}, wantCode: codes.Unavailable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{}
			w := watcher{open: tt.log.open, retry: &retrier{backoff: time.Second, limit: tt.limit, now: clock.now, sleep: clock.sleep}}
			var seqs []uint64
			finished, err := w.run(t.Context(), tt.from, func(ev *kilnv1.BuildEvent) { seqs = append(seqs, ev.GetSequence()) })
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tt.wantCode)
			}
			if (finished != nil) != (tt.wantCode == codes.OK) {
				t.Errorf("finished = %v with error %v", finished, err)
			}
			if !slices.Equal(seqs, tt.wantSeqs) {
				t.Errorf("events %v, want %v", seqs, tt.wantSeqs)
			}
			if !slices.Equal(tt.log.froms, tt.wantFroms) {
				t.Errorf("opened from %v, want %v", tt.log.froms, tt.wantFroms)
			}
		})
	}
}

// TestWatcherSoFarReadsPastTheFinishedEvent: a replay (soFar) delivers the
// automatic cache export that follows the finished event, across a broken
// stream too, and returns the finished event; following live stops at it.
func TestWatcherSoFarReadsPastTheFinishedEvent(t *testing.T) {
	logOf := func() []*kilnv1.BuildEvent {
		return append(buildLog(3), &kilnv1.BuildEvent{Sequence: 4, BuildId: "b1", Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
			Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: "registry:5000/kiln-cache/t:l", Automatic: true,
		}}})
	}
	unavailable := status.Error(codes.Unavailable, "gateway restarting")
	for _, tt := range []struct {
		name     string
		log      *eventLog
		soFar    bool
		wantSeqs []uint64
	}{
		{"replay", &eventLog{events: logOf()}, true, []uint64{1, 2, 3, 4}},
		{"replay broken after the finished event", &eventLog{events: logOf(), cuts: []int{3}, cutErr: unavailable}, true, []uint64{1, 2, 3, 4}},
		{"following", &eventLog{events: logOf()}, false, []uint64{1, 2, 3}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{}
			w := watcher{open: tt.log.open, soFar: tt.soFar, retry: &retrier{backoff: time.Second, limit: 3 * time.Second, now: clock.now, sleep: clock.sleep}}
			var seqs []uint64
			finished, err := w.run(t.Context(), 1, func(ev *kilnv1.BuildEvent) { seqs = append(seqs, ev.GetSequence()) })
			if err != nil || finished.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
				t.Fatalf("run: %v, %v", finished, err)
			}
			if !slices.Equal(seqs, tt.wantSeqs) {
				t.Fatalf("events %v, want %v", seqs, tt.wantSeqs)
			}
		})
	}
}

// fakeClock is a clock that moves only by the waits asked of it.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	c.t = c.t.Add(d)
	return nil
}

func TestWatcherStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	log := &eventLog{events: buildLog(3), openErr: status.Error(codes.Unavailable, "down")}
	w := watcher{open: log.open, retry: &retrier{backoff: maxBackoff, limit: time.Hour}}
	if _, err := w.run(ctx, 0, nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("err %v", err)
	}
	if len(log.froms) != 1 {
		t.Fatalf("reopened %d times after the context ended", len(log.froms)-1)
	}
}

func TestSettle(t *testing.T) {
	finished := &kilnv1.BuildFinished{
		State:  kilnv1.BuildState_BUILD_STATE_FAILED,
		Error:  "exit code: 1",
		Agent:  "a1",
		Result: &kilnv1.BuildResult{Steps: 2},
	}
	tests := []struct {
		name   string
		record *kilnv1.Build
		want   kilnv1.BuildState
		error  string
	}{
		{name: "stale record takes the finished event", record: &kilnv1.Build{State: kilnv1.BuildState_BUILD_STATE_RUNNING},
			want: kilnv1.BuildState_BUILD_STATE_FAILED, error: "exit code: 1"},
		{name: "terminal record wins", record: &kilnv1.Build{State: kilnv1.BuildState_BUILD_STATE_CANCELLED, Error: "cancelled by user"},
			want: kilnv1.BuildState_BUILD_STATE_CANCELLED, error: "cancelled by user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			settle(tt.record, finished)
			if tt.record.GetState() != tt.want || tt.record.GetError() != tt.error {
				t.Fatalf("record %v", tt.record)
			}
		})
	}
}
