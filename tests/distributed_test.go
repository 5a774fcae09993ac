package tests

import (
	"path/filepath"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/services/bus"
)

// proc is one separately started kiln binary.
type proc = faultProc

// startProc runs bin with args plus --ready-file and waits until it is ready.
func startProc(t *testing.T, bin string, args ...string) *proc {
	return startFaultProc(t, filepath.Base(bin), bin, args...)
}

// TestDistributedBinaries runs the gateway, scheduler and agent as separate
// processes against one real NATS server, as a distributed farm does, each
// with its own credential (--nats-nkey-file) and its role's permissions.
func TestDistributedBinaries(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	seeds, err := bus.LoadOrCreateSeeds(t.TempDir(), "distributed-1")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), Identities: seeds.Identities})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	t.Setenv("KILN_NATS_URL", ns.ClientURL()) // every binary reads its flags from KILN_ variables too

	gw := startProc(t, gatewayBin, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--nats-nkey-file", seeds.File(bus.RoleGateway, ""))
	startProc(t, schedulerBin, "--http-listen", "127.0.0.1:0", "--nats-nkey-file", seeds.File(bus.RoleScheduler, ""))
	startProc(t, agentBin, "--name", "distributed-1", "--slots", "1", "--http-listen", "127.0.0.1:0", "--blob-cache-dir", t.TempDir(),
		"--nats-nkey-file", seeds.File(bus.RoleAgent, "distributed-1"))

	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo distributed-" + uniq() + "\n"})
	meta := filepath.Join(t.TempDir(), "meta.json")
	r := kiln(t, gw.addrs["grpc"], "build", "--progress", "plain", "--metadata-file", meta, dir)
	if r.code != 0 {
		t.Fatalf("build through separate binaries: %s", r)
	}
	if got := str(metadata(t, meta), "kiln.agent"); got != "distributed-1" {
		t.Fatalf("kiln.agent = %q, want distributed-1", got)
	}
}
