package bus_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// violations connects as role with an error handler that collects the
// server's permission violations.
func violations(t *testing.T, f *bustest.Farm, role bus.Role, agent string) (*bus.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 16)
	opts, err := bus.ClientAuth{NkeyFile: f.Seeds.File(role, agent)}.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	if role == bus.RoleAgent {
		opts = append(opts, nats.CustomInboxPrefix(bus.AgentInboxPrefix(agent)))
	}
	conn, err := bus.Connect(t.Context(), f.URL, t.Name(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return conn, errs
}

// wantViolation waits for the server to refuse something with a
// permissions violation that names subject.
func wantViolation(t *testing.T, errs <-chan error, subject string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.Contains(err.Error(), "Permissions Violation") && strings.Contains(err.Error(), subject) {
				return
			}
		case <-deadline:
			t.Fatalf("no permissions violation for %s", subject)
		}
	}
}

func TestNATSWithoutCredentialsIsRefused(t *testing.T) {
	f := bustest.AuthFarm(t, "agent-a")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := bus.Connect(ctx, f.URL, "anonymous")
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("anonymous connect = %v, want an authorization violation", err)
	}
	// A seed the server does not know is refused too.
	other, err := bus.LoadOrCreateSeeds(t.TempDir(), "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := bus.ClientAuth{NkeyFile: other.File(bus.RoleAgent, "agent-a")}.Options()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Connect(ctx, f.URL, "stranger", opts...); err == nil {
		t.Fatal("a credential of another farm was accepted")
	}
}

// TestAgentCredentialIsConfined attacks the farm with an agent's
// credential: it cannot read any build's events or records, write a build
// record, queue a build, or speak for another agent; what it needs works.
func TestAgentCredentialIsConfined(t *testing.T) {
	f := bustest.AuthFarm(t, "agent-a", "agent-b")
	gw := f.Conn(t, bus.RoleGateway, "")
	a, errs := violations(t, f, bus.RoleAgent, "agent-a")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	// What an agent needs: its heartbeat, the CAS, its own subjects.
	agents, err := a.JS.KeyValue(ctx, bus.BucketAgents)
	if err != nil {
		t.Fatalf("open %s as an agent: %v", bus.BucketAgents, err)
	}
	if _, err := agents.Put(ctx, "agent-a", []byte("x")); err != nil {
		t.Fatalf("own heartbeat: %v", err)
	}
	if _, err := a.JS.ObjectStore(ctx, bus.BucketCAS); err != nil {
		t.Fatalf("open %s as an agent: %v", bus.BucketCAS, err)
	}
	if err := a.NC.Publish(bus.WithdrawSubject("agent-a"), nil); err != nil {
		t.Fatal(err)
	}

	// Each attempt is a plain publish: the server answers a refused one
	// with a permissions violation naming the subject, and nothing lands.
	refused := func(t *testing.T, subject string) {
		t.Helper()
		if err := a.NC.Publish(subject, []byte("forged")); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errs, `"`+subject+`"`)
	}
	const id = "b0000000000000000000000000"
	t.Run("another agent's heartbeat", func(t *testing.T) {
		refused(t, "$KV."+bus.BucketAgents+".agent-b")
		gwAgents, err := gw.JS.KeyValue(ctx, bus.BucketAgents)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gwAgents.Get(ctx, "agent-b"); !bus.IsNotFound(err) {
			t.Fatalf("agent-b's heartbeat after the attempt: %v, want none", err)
		}
	})
	t.Run("subscribe to a build's events", func(t *testing.T) {
		for _, subject := range []string{bus.EventsSubject(id), "kiln.events.>", "kiln.>", ">"} {
			if _, err := a.NC.SubscribeSync(subject); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, errs, `"`+subject+`"`)
		}
	})
	t.Run("read the events stream", func(t *testing.T) {
		refused(t, "$JS.API.STREAM.INFO."+bus.StreamEvents)
		refused(t, "$JS.API.CONSUMER.CREATE."+bus.StreamEvents)
		refused(t, "$JS.API.CONSUMER.CREATE."+bus.StreamEvents+".c."+bus.EventsSubject(id))
		refused(t, "$JS.API.DIRECT.GET."+bus.StreamEvents)
		refused(t, "$JS.API.STREAM.MSG.GET."+bus.StreamEvents)
	})
	t.Run("read or write build records", func(t *testing.T) {
		refused(t, "$JS.API.STREAM.INFO.KV_"+bus.BucketBuilds)
		refused(t, "$JS.API.DIRECT.GET.KV_"+bus.BucketBuilds+".$KV."+bus.BucketBuilds+"."+id)
		refused(t, "$KV."+bus.BucketBuilds+"."+id)
		refused(t, bus.EventsSubject(id))
		builds, err := gw.JS.KeyValue(ctx, bus.BucketBuilds)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := builds.Get(ctx, id); !bus.IsNotFound(err) {
			t.Fatalf("build record after the attempt: %v, want none", err)
		}
		events, err := gw.JS.Stream(ctx, bus.StreamEvents)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := events.Info(ctx); err != nil || info.State.Msgs != 0 {
			t.Fatalf("events stream after the attempt: %v, %d messages; want none", err, info.State.Msgs)
		}
	})
	t.Run("queue a build", func(t *testing.T) {
		refused(t, bus.SubjectRequests)
	})
	t.Run("speak for another agent", func(t *testing.T) {
		for _, subject := range []string{bus.ReportSubject("agent-b"), bus.PullSubject("agent-b"), bus.WithdrawSubject("agent-b")} {
			refused(t, subject)
		}
	})
	t.Run("set the farm up", func(t *testing.T) {
		refused(t, "$JS.API.STREAM.CREATE."+bus.StreamEvents)
		refused(t, "$JS.API.STREAM.UPDATE.KV_"+bus.BucketAgents)
		refused(t, "$JS.API.STREAM.DELETE."+bus.StreamEvents)
		refused(t, "$JS.API.STREAM.PURGE.KV_"+bus.BucketAgents)
	})
	t.Run("hear other clients' replies", func(t *testing.T) {
		if _, err := a.NC.SubscribeSync("_INBOX.>"); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errs, "_INBOX.>")
	})
	t.Run("drain an agent or hear another's drain requests", func(t *testing.T) {
		refused(t, bus.DrainSubject("agent-b"))
		refused(t, bus.DrainSubject("agent-a"))
		if _, err := a.NC.SubscribeSync(bus.DrainSubject("agent-b")); err != nil {
			t.Fatal(err)
		}
		wantViolation(t, errs, `"`+bus.DrainSubject("agent-b")+`"`)
	})
}

// TestGatewayDrainRequestIsAnsweredByItsAgent: the gateway's credential
// may ask any agent to drain, and the agent's may answer its own.
func TestGatewayDrainRequestIsAnsweredByItsAgent(t *testing.T) {
	const name = "build-1.example.com" // a host name: several subject tokens
	f := bustest.AuthFarm(t, name)
	gw := f.Conn(t, bus.RoleGateway, "")
	a, errs := violations(t, f, bus.RoleAgent, name)
	sub, err := a.NC.Subscribe(bus.DrainSubject(name), func(m *nats.Msg) {
		if err := m.Respond([]byte("draining")); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := a.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	reply, err := gw.NC.RequestWithContext(ctx, bus.DrainSubject(name), []byte("drain"))
	if err != nil {
		t.Fatalf("drain request: %v", err)
	}
	if string(reply.Data) != "draining" {
		t.Fatalf("drain answer %q, want the agent's", reply.Data)
	}
	select {
	case err := <-errs:
		t.Fatalf("agent refused: %v", err)
	default:
	}
}

// TestSeedFilesArePrivate: the credentials kilnd generates can be read by
// their owner only.
func TestSeedFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nats-creds")
	seeds, err := bus.LoadOrCreateSeeds(dir, "kilnd")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("credentials dir: %v, mode %v; want 0700", err, st.Mode().Perm())
	}
	for _, id := range seeds.Identities {
		st, err := os.Stat(seeds.File(id.Role, id.Agent))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s seed: %v, mode %v; want 0600", id.Role, err, st.Mode().Perm())
		}
	}
	again, err := bus.LoadOrCreateSeeds(dir, "kilnd")
	if err != nil {
		t.Fatal(err)
	}
	for i := range seeds.Identities {
		if again.Identities[i] != seeds.Identities[i] {
			t.Fatalf("seeds changed on the second start: %v, then %v", seeds.Identities[i], again.Identities[i])
		}
	}
}

func TestAgentNamesBecomeOneSubjectSuffix(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"kilnd", true}, {"build-1.example.com", true}, {"a_b", true},
		{"", false}, {"a b", false}, {"a.*", false}, {"a.>", false}, {".a", false}, {"a.", false}, {"a..b", false}, {"a/b", false},
		{strings.Repeat("a", 129), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := bus.ValidAgentName(tc.name); got != tc.ok {
				t.Fatalf("ValidAgentName(%q) = %v, want %v", tc.name, got, tc.ok)
			}
			if !tc.ok {
				return
			}
			if got, ok := bus.AgentFromSubject(bus.ReportSubject(tc.name)); !ok || got != tc.name {
				t.Fatalf("AgentFromSubject(ReportSubject(%q)) = %q, %v", tc.name, got, ok)
			}
		})
	}
}

// TestAuthorizationConfigIsWhatTheEmbeddedServerEnforces parses the
// rendered configuration with nats-server's own parser and compares the
// permissions with those kilnd's embedded server gets.
func TestAuthorizationConfigIsWhatTheEmbeddedServerEnforces(t *testing.T) {
	seeds, err := bus.LoadOrCreateSeeds(t.TempDir(), "agent-a", "build-1.example.com")
	if err != nil {
		t.Fatal(err)
	}
	conf, err := bus.AuthorizationConfig(seeds.Identities)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(path, []byte("port: -1\n"+conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects the rendered configuration: %v\n%s", err, conf)
	}
	want, err := bus.NkeyUsers(seeds.Identities)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Nkeys) != len(want) {
		t.Fatalf("%d users parsed, want %d", len(opts.Nkeys), len(want))
	}
	for i, u := range opts.Nkeys {
		w := want[i]
		if u.Nkey != w.Nkey || strings.Join(u.Permissions.Publish.Allow, " ") != strings.Join(w.Permissions.Publish.Allow, " ") ||
			strings.Join(u.Permissions.Subscribe.Allow, " ") != strings.Join(w.Permissions.Subscribe.Allow, " ") ||
			(u.Permissions.Response == nil) != (w.Permissions.Response == nil) {
			t.Errorf("user %d parsed as %+v, want %+v", i, u.Permissions, w.Permissions)
		}
	}
}

// TestDeployPermissionsFileIsCurrent: deploy/nats/permissions.conf is the
// rendering of Permissions with placeholder keys; regenerate it with
// KILN_UPDATE_DEPLOY=1 go test -run TestDeployPermissionsFileIsCurrent.
func TestDeployPermissionsFileIsCurrent(t *testing.T) {
	conf, err := bus.AuthorizationConfig([]bus.Identity{
		{Role: bus.RoleGateway, PublicKey: "GATEWAY_NKEY"},
		{Role: bus.RoleScheduler, PublicKey: "SCHEDULER_NKEY"},
		{Role: bus.RoleAgent, Agent: "AGENT_NAME", PublicKey: "AGENT_NKEY"},
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "deploy", "nats", "permissions.conf")
	if os.Getenv("KILN_UPDATE_DEPLOY") == "1" {
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != conf {
		t.Fatalf("%s is stale: run KILN_UPDATE_DEPLOY=1 go test -run TestDeployPermissionsFileIsCurrent ./bus/ in services", path)
	}
}
