package agentproto

import (
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// DefaultLogMaxBytes is the log text an attempt of a build may append to
// its log when its tenant sets no limit (TenantPolicy.log_max_bytes 0).
const DefaultLogMaxBytes = 64 << 20

// LogLimit is the log text limit of each attempt of a build of policy.
func LogLimit(p *kilnv1.TenantPolicy) uint64 {
	if n := p.GetLogMaxBytes(); n > 0 {
		return n
	}
	return DefaultLogMaxBytes
}

// logBytes is how much log text ev carries: the bytes of a LogLine's
// text, 0 for any other event.
func logBytes(ev *kilnv1.BuildEvent) uint64 {
	return uint64(len(ev.GetLog().GetText()))
}

// cutLog applies an attempt's log limit to the events of one report:
// before is the log text of the attempt's earlier reports. Log lines are
// kept while the attempt's text stays within limit; where it first passes
// the limit a marker line (of the step of the first line dropped) takes
// the place of the rest, so a reader of the log sees where and why it
// ends. Steps, pushes and state events are kept. The same report gives
// the same events, so a report sent again appends nothing twice.
func cutLog(events []*kilnv1.BuildEvent, before, limit uint64) []*kilnv1.BuildEvent {
	n := before
	for i, ev := range events {
		if ev.GetLog() == nil || n+logBytes(ev) <= limit {
			n += logBytes(ev)
			continue
		}
		// events[i] is the first line that does not fit: copy what is kept.
		out := append(make([]*kilnv1.BuildEvent, 0, len(events)), events[:i]...)
		if n <= limit { // no line of the attempt was dropped before this one
			out = append(out, &kilnv1.BuildEvent{Time: ev.GetTime(), Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{
				Step: ev.GetLog().GetStep(), Text: LogLimitMarker(limit),
			}}})
		}
		for _, ev := range events[i:] {
			if ev.GetLog() == nil {
				out = append(out, ev)
			}
		}
		return out
	}
	return events
}

// LogLimitMarker is the line that ends an attempt's log cut at limit
// bytes of text.
func LogLimitMarker(limit uint64) string {
	return fmt.Sprintf("[kiln] log limit reached: the farm keeps the first %s of output of each attempt of a build (the tenant's log_max_bytes); the rest of this attempt's output is not kept",
		byteSize(limit))
}

// byteSize writes n in the largest binary unit that divides it.
func byteSize(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
