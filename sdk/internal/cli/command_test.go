package cli

import (
	"strconv"
	"strings"
	"testing"
)

// TestEveryCommandHelp checks what every command's --help must hold, and
// that an unknown flag is a usage error pointing at it.
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, c.name, "--help")
			if code != ExitOK {
				t.Fatalf("kiln %s --help exited %d: %s", c.name, code, stderr)
			}
			for _, want := range []string{"Usage:  kiln " + c.name, "\nExamples:\n", "\nExit status:\n  0 "} {
				if !strings.Contains(stdout, want) {
					t.Errorf("kiln %s --help lacks %q:\n%s", c.name, want, stdout)
				}
			}
			if _, examples, _ := strings.Cut(stdout, "\nExamples:\n"); !strings.Contains(examples, "  kiln "+c.name) {
				t.Errorf("kiln %s --help has no example of the command:\n%s", c.name, stdout)
			}
			code, _, stderr = run(t, nil, c.name, "--no-such-flag")
			if code != ExitUsage || !strings.Contains(stderr, "unknown flag: --no-such-flag") || !strings.Contains(stderr, "See 'kiln "+c.name+" --help'.") {
				t.Errorf("kiln %s --no-such-flag: exit %d, stderr %q; want exit %d naming the flag and the help", c.name, code, stderr, ExitUsage)
			}
		})
	}
}

// TestUsageListsCommandsAndExitCodes checks the top-level usage: every
// command with its summary, and every exit code the commands use.
func TestUsageListsCommandsAndExitCodes(t *testing.T) {
	_, stdout, _ := run(t, nil, "--help")
	for _, c := range commands() {
		if !strings.Contains(stdout, "  "+c.name+" ") || !strings.Contains(stdout, c.summary) {
			t.Errorf("usage lacks command %s (%s):\n%s", c.name, c.summary, stdout)
		}
	}
	for _, code := range []int{ExitOK, ExitFailed, ExitUsage, ExitUnreachable, ExitTimedOut, ExitInterrupted} {
		if !strings.Contains(stdout, "\n  "+strconv.Itoa(code)+" ") {
			t.Errorf("usage does not explain exit code %d:\n%s", code, stdout)
		}
	}
}
