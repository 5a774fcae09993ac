package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestContextSummary(t *testing.T) {
	tests := []struct {
		name            string
		files           int
		total, uploaded int64
		want            string
	}{
		{name: "mostly on the farm", files: 1234, total: 210_000_000, uploaded: 400_000,
			want: "context: 1234 files, 210.0 MB, 0.4 MB uploaded (99.8% already on the farm)"},
		{name: "nothing uploaded", files: 3, total: 1_234_567, uploaded: 0,
			want: "context: 3 files, 1.2 MB, 0.0 MB uploaded (100.0% already on the farm)"},
		{name: "everything uploaded", files: 1, total: 13, uploaded: 13,
			want: "context: 1 files, 0.0 MB, 0.0 MB uploaded (0.0% already on the farm)"},
		{name: "empty context", files: 0, total: 0, uploaded: 0,
			want: "context: 0 files, 0.0 MB, 0.0 MB uploaded (100.0% already on the farm)"},
		{name: "empty files only", files: 2, total: 0, uploaded: 0,
			want: "context: 2 files, 0.0 MB, 0.0 MB uploaded (100.0% already on the farm)"},
		{name: "a byte uploaded is not 100%", files: 9, total: 1_000_000_000, uploaded: 1,
			want: "context: 9 files, 1000.0 MB, 0.0 MB uploaded (99.9% already on the farm)"},
		{name: "half", files: 2, total: 3_000_000, uploaded: 1_500_000,
			want: "context: 2 files, 3.0 MB, 1.5 MB uploaded (50.0% already on the farm)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := contextSummary(tt.files, tt.total, tt.uploaded); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestContextSummaryModes(t *testing.T) {
	const line = "context: 2 files, 0.5 MB, 0.1 MB uploaded (80.0% already on the farm)\n"
	tests := []struct {
		mode       Mode
		wantStderr string
	}{
		{mode: Plain, wantStderr: line},
		{mode: TTY, wantStderr: line},
		{mode: Quiet, wantStderr: ""},
		{mode: JSON, wantStderr: ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			p := New(tt.mode, &stdout, &stderr, WithTerminal(true, 0, 0))
			p.ContextProgress("Hashing", 1, 2, 100, 500_000)
			p.ContextSummary(2, 500_000, 100_000)
			p.Close()
			got := stderr.String()
			if tt.mode == TTY {
				// The view drew the line and then left it as its summary.
				s := newScreen(t, 200)
				s.write(got)
				got = s.text() + "\n"
			}
			if got != tt.wantStderr || stdout.Len() != 0 {
				t.Errorf("stdout %q stderr %q, want stderr %q", stdout.String(), stderr.String(), tt.wantStderr)
			}
		})
	}
}

func TestContextProgressLine(t *testing.T) {
	type call struct {
		at    time.Duration // since the first call
		phase string
		files int
		bytes int64
	}
	const mb = 1_000_000
	tests := []struct {
		name     string
		terminal bool
		mode     Mode
		calls    []call
		// want lists the status lines drawn, in order.
		want []string
	}{
		{
			name: "throttled to one redraw per 100ms after the first 100ms", terminal: true, mode: TTY,
			calls: []call{
				{at: 0, phase: "Hashing", files: 0, bytes: 1 * mb},
				{at: 50 * time.Millisecond, phase: "Hashing", files: 1, bytes: 2 * mb},
				{at: 100 * time.Millisecond, phase: "Hashing", files: 2, bytes: 5 * mb},
				{at: 150 * time.Millisecond, phase: "Hashing", files: 3, bytes: 6 * mb},
				{at: 199 * time.Millisecond, phase: "Hashing", files: 3, bytes: 7 * mb},
				{at: 200 * time.Millisecond, phase: "Hashing", files: 4, bytes: 10 * mb},
			},
			want: []string{
				"[+] Hashing context: 2/4 files, 5.0/10.0 MB, 50.0 MB/s",
				"[+] Hashing context: 4/4 files, 10.0/10.0 MB, 50.0 MB/s",
			},
		},
		{
			name: "a new phase starts its own delay and rate", terminal: true, mode: TTY,
			calls: []call{
				{at: 0, phase: "Hashing", files: 1, bytes: 1 * mb},
				{at: 500 * time.Millisecond, phase: "Hashing", files: 4, bytes: 10 * mb},
				{at: 600 * time.Millisecond, phase: "Uploading", files: 0, bytes: 1 * mb},
				{at: 650 * time.Millisecond, phase: "Uploading", files: 1, bytes: 2 * mb},
				{at: 1600 * time.Millisecond, phase: "Uploading", files: 4, bytes: 10 * mb},
			},
			want: []string{
				"[+] Hashing context: 4/4 files, 10.0/10.0 MB, 20.0 MB/s",
				"[+] Uploading context: 4/4 files, 10.0/10.0 MB, 10.0 MB/s",
			},
		},
		{
			name: "not drawn when stderr is no terminal", terminal: false, mode: TTY,
			calls: []call{{at: 0, phase: "Hashing"}, {at: time.Second, phase: "Hashing", bytes: mb}},
		},
		{
			name: "not drawn in plain mode", terminal: true, mode: Plain,
			calls: []call{{at: 0, phase: "Hashing"}, {at: time.Second, phase: "Hashing", bytes: mb}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
			c := &clock{t: t0}
			p := New(tt.mode, &bytes.Buffer{}, &stderr, withClock(c.now), WithContext(cancelled()), WithTerminal(tt.terminal, 200, 0))
			for _, call := range tt.calls {
				c.t = t0.Add(call.at)
				p.ContextProgress(call.phase, call.files, 4, call.bytes, 10*mb)
			}
			// Each drawing of the view ends with "erase below" (CSI J);
			// its first line is the header.
			var got []string
			for _, frame := range strings.Split(stderr.String(), "\x1b[J") {
				if frame == "" {
					continue
				}
				s := newScreen(t, 200)
				s.write(strings.TrimPrefix(frame, "\x1b[1A\r"))
				got = append(got, strings.SplitN(s.text(), "\n", 2)[0])
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("drawn\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
