package bus_test

import (
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/services/bus"
)

// FuzzAgentFromSubject: the schedulers take an agent's name from the
// subject its credential let it publish on. Whatever the subject, a name
// accepted is a valid name that maps back to exactly that subject, so no
// subject speaks for another agent or smuggles a wildcard.
func FuzzAgentFromSubject(f *testing.F) {
	for _, s := range []string{
		"kiln.agent.report.kilnd", "kiln.sched.pull.build-1.example.com", "kiln.sched.withdraw.a",
		"kiln.agent.report.", "kiln.agent.report.a.>", "kiln.agent.report.*", "kiln.agent.report.a..b",
		"kiln.sched.pull.a b", "kiln.events.x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		name, ok := bus.AgentFromSubject(subject)
		if !ok {
			return
		}
		if !bus.ValidAgentName(name) || strings.ContainsAny(name, "*> \t\r\n") {
			t.Fatalf("subject %q gave the invalid agent name %q", subject, name)
		}
		if subject != bus.ReportSubject(name) && subject != bus.PullSubject(name) && subject != bus.WithdrawSubject(name) {
			t.Fatalf("subject %q gave agent %q, whose subjects differ", subject, name)
		}
	})
}
