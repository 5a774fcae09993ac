package progress

import (
	"fmt"
	"time"
)

const (
	// contextProgressDelay is how long a context phase runs before its
	// progress line appears: small contexts show none.
	contextProgressDelay = 100 * time.Millisecond
	// contextProgressInterval throttles redraws of the line to ~10/s.
	contextProgressInterval = 100 * time.Millisecond
)

// contextProgress is the phase (hashing, uploading) of the build context
// whose progress the tty view's header shows.
type contextProgress struct {
	phase string
	start time.Time
	drawn time.Time
}

// ContextProgress shows, in tty mode on a terminal, in the header of the
// view, how far a phase of sending the build context ("Hashing",
// "Uploading") has got: files and bytes out of the totals and the rate
// since the phase began. The header appears once the phase has run for
// 100ms and is redrawn at most ten times a second; other modes show
// nothing.
func (p *Printer) ContextProgress(phase string, files, totalFiles int, bytes, totalBytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != TTY || !p.terminal {
		return
	}
	now := p.now()
	if phase != p.sending.phase {
		p.sending = contextProgress{phase: phase, start: now}
	}
	elapsed := now.Sub(p.sending.start)
	if elapsed < contextProgressDelay || now.Sub(p.sending.drawn) < contextProgressInterval {
		return
	}
	p.sending.drawn = now
	p.status = fmt.Sprintf("[+] %s context: %d/%d files, %.1f/%s, %s/s",
		phase, files, totalFiles, float64(bytes)/1e6, megabytes(totalBytes), megabytes(int64(float64(bytes)/elapsed.Seconds())))
	p.redraw(true)
}

// ContextSummary ends the context's progress with one line in plain and
// tty modes, such as
//
//	context: 1234 files, 210.0 MB, 0.4 MB uploaded (99.8% already on the farm)
//
// where MB is 10^6 bytes. The share already on the farm is rounded down, so
// it reads 100.0% only when nothing was uploaded.
func (p *Printer) ContextSummary(files int, totalBytes, uploadedBytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sending = contextProgress{}
	p.status = ""
	p.say(contextSummary(files, totalBytes, uploadedBytes))
}

func contextSummary(files int, totalBytes, uploadedBytes int64) string {
	permille := int64(1000)
	if totalBytes > 0 {
		permille = max(totalBytes-uploadedBytes, 0) * 1000 / totalBytes
	}
	return fmt.Sprintf("context: %d files, %s, %s uploaded (%d.%d%% already on the farm)",
		files, megabytes(totalBytes), megabytes(uploadedBytes), permille/10, permille%10)
}

// megabytes formats n bytes in MB (10^6 bytes) with one decimal.
func megabytes(n int64) string {
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}
