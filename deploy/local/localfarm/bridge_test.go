package localfarm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestOwnerGone: a bridge is taken over only when the process recorded as
// its owner has exited — not while it runs, and never without a record.
func TestOwnerGone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("bridge owner records live in " + bridgeOwners + ": needs root")
	}
	if err := os.MkdirAll(bridgeOwners, 0o755); err != nil {
		t.Fatal(err)
	}
	name := "kilnbr-test-" + strconv.Itoa(os.Getpid())
	record := filepath.Join(bridgeOwners, name)
	t.Cleanup(func() { os.Remove(record) })

	if ownerGone(name) {
		t.Error("a bridge without an owner record counts as abandoned")
	}
	if err := os.WriteFile(record, []byte(processIdentity(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	if ownerGone(name) {
		t.Error("a bridge whose owner runs counts as abandoned")
	}
	exited := exec.Command("true")
	if err := exited.Start(); err != nil {
		t.Fatal(err)
	}
	identity := processIdentity(exited.Process.Pid) // readable: unreaped, it is at least a zombie
	if err := exited.Wait(); err != nil {
		t.Fatal(err)
	}
	if identity == "" {
		t.Fatalf("no identity for pid %d", exited.Process.Pid)
	}
	if err := os.WriteFile(record, []byte(identity), 0o644); err != nil {
		t.Fatal(err)
	}
	if !ownerGone(name) {
		t.Errorf("a bridge whose owner %q exited does not count as abandoned", identity)
	}
}
