package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestKilndNATSRequiresItsCredentials: kilnd's embedded NATS refuses a
// client without credentials (another local user cannot connect), and the
// credentials kilnd made on first start are readable by their owner only.
func TestKilndNATSRequiresItsCredentials(t *testing.T) {
	k := sharedKilnd(t)
	nc, err := nats.Connect(k.addrs.NATS, nats.Name("anonymous"))
	if err == nil {
		nc.Close()
		t.Fatal("kilnd's NATS accepted a client without credentials")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("anonymous connect: %v, want an authorization violation", err)
	}
	nc, err = nats.Connect(k.addrs.NATS, nats.UserInfo("kiln", "kiln"))
	if err == nil {
		nc.Close()
		t.Fatal("kilnd's NATS accepted a made-up user and password")
	}

	dir := filepath.Join(k.dataDir, "data", "nats-creds")
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("%s is mode %v, want 0700", dir, st.Mode().Perm())
	}
	seeds, err := filepath.Glob(filepath.Join(dir, "*.nk"))
	if err != nil || len(seeds) != 3 { // gateway, scheduler, agent e2e-agent
		t.Fatalf("seeds in %s: %v %v, want gateway, scheduler and agent", dir, seeds, err)
	}
	for _, s := range seeds {
		st, err := os.Stat(s)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s is mode %v, want 0600", s, st.Mode().Perm())
		}
	}
	// Its own credential is what lets a role in.
	opt, err := nats.NkeyOptionFromSeed(filepath.Join(dir, "gateway.nk"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err = nats.Connect(k.addrs.NATS, opt)
	if err != nil {
		t.Fatalf("connect with kilnd's gateway credential: %v", err)
	}
	nc.Close()
}
