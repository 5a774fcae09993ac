package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/secretid"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/logging/logtest"
	"github.com/kilnbuild/kiln/services/sealed"
)

// testGateway is a Gateway on a real in-process NATS server, served over
// gRPC on a loopback listener.
type testGateway struct {
	client kilnv1.BuildServiceClient
	conn   *bus.Conn
	logs   *logtest.Buffer
	ref    *kilnv1.ContextRef
}

// startGateway starts a gateway whose farm has the secrets public key key
// (none when nil) and stores a build context with a Dockerfile.
func startGateway(t *testing.T, key *sealed.PublicKey) *testGateway {
	t.Helper()
	ctx := t.Context()
	conn := bustest.Conn(t)
	logs := &logtest.Buffer{}
	g, err := New(ctx, Config{Conn: conn, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), SecretsKey: key})
	if err != nil {
		t.Fatal(err)
	}
	_, cc := serveGateway(t, g, nil)
	return &testGateway{
		client: kilnv1.NewBuildServiceClient(cc), conn: conn, logs: logs,
		ref: storeDockerfile(t, conn, "FROM scratch\nRUN --mount=type=secret,id=npm true\n"),
	}
}

// sealFor seals value to k the way a client does: for the caller's tenant
// and the build's nonce.
func sealFor(t *testing.T, k *sealed.PrivateKey, nonce []byte, id, value string) *kilnv1.SealedSecret {
	t.Helper()
	b, err := seal.Seal(k.PublicKey(), seal.Binding{Tenant: defaultTenant, Nonce: nonce, ID: id}, []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	return &kilnv1.SealedSecret{Id: id, Sealed: b, KeyId: k.KeyID()}
}

// newNonce returns a fresh seal nonce.
func newNonce(t *testing.T) []byte {
	t.Helper()
	n, err := seal.NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newKey(t *testing.T) *sealed.PrivateKey {
	t.Helper()
	k, err := sealed.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func publicOf(k *sealed.PrivateKey) *sealed.PublicKey {
	pub := k.PublicKey()
	return &pub
}

func (g *testGateway) start(t *testing.T, req *kilnv1.StartBuildRequest) *kilnv1.Build {
	t.Helper()
	if req.Context == nil {
		req.Context = g.ref
	}
	resp, err := g.client.StartBuild(t.Context(), req)
	if err != nil {
		t.Fatalf("StartBuild: %v", err)
	}
	return resp.Build
}

func (g *testGateway) countBuilds(t *testing.T) int {
	t.Helper()
	resp, err := g.client.ListBuilds(t.Context(), &kilnv1.ListBuildsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Builds)
}

func TestGetSecretsKey(t *testing.T) {
	k := newKey(t)
	resp, err := startGateway(t, publicOf(k)).client.GetSecretsKey(t.Context(), &kilnv1.GetSecretsKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub := k.PublicKey()
	if !bytes.Equal(resp.PublicKey, pub[:]) {
		t.Errorf("GetSecretsKey returned another public key")
	}
	sum := sha256.Sum256(resp.PublicKey)
	if resp.KeyId != hex.EncodeToString(sum[:])[:16] || resp.KeyId != k.KeyID() {
		t.Errorf("key id %q, want the first 16 hex digits of the key's sha256", resp.KeyId)
	}
	if resp.Tenant != defaultTenant {
		t.Errorf("tenant %q, want the caller's, %q", resp.Tenant, defaultTenant)
	}

	_, err = startGateway(t, nil).client.GetSecretsKey(t.Context(), &kilnv1.GetSecretsKeyRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "--secrets-public-key") {
		t.Fatalf("GetSecretsKey without a key = %v, want FailedPrecondition naming --secrets-public-key", err)
	}
}

func TestStartBuildRefusesBadSecrets(t *testing.T) {
	k, other := newKey(t), newKey(t)
	g := startGateway(t, publicOf(k))
	noKey := startGateway(t, nil)
	tooLarge := &kilnv1.SealedSecret{Id: "big", Sealed: make([]byte, seal.MaxSealedBytes+1), KeyId: k.KeyID()}
	n := newNonce(t)
	sealV := func(k *sealed.PrivateKey, id, value string) *kilnv1.SealedSecret { return sealFor(t, k, n, id, value) }
	tests := []struct {
		name    string
		g       *testGateway
		spec    *kilnv1.BuildSpec
		code    codes.Code
		message string
	}{
		{name: "id given twice", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{sealV(k, "npm", "a"), sealV(k, "npm", "b")}},
			code: codes.InvalidArgument, message: `secret id "npm" is given twice`},
		{name: "bad id", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{sealV(k, "../etc", "a")}},
			code: codes.InvalidArgument, message: `secret id "../etc"`},
		{name: "sealed to another key", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{sealV(other, "npm", "a")}},
			code: codes.FailedPrecondition, message: `secret "npm" was sealed to key "` + other.KeyID() + `", but the farm's secrets key is ` + k.KeyID() + ` (the key changed): run the build again`},
		{name: "no key id", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{{Id: "npm", Sealed: sealV(k, "npm", "a").Sealed}}},
			code: codes.FailedPrecondition, message: `secret "npm" was sealed to key ""`},
		{name: "too large", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{tooLarge}},
			code: codes.InvalidArgument, message: `secret "big" is 512001 bytes, over the limit of 512000 bytes`},
		{name: "too many", g: g, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: manySecrets(secretid.MaxSecrets + 1)},
			code: codes.InvalidArgument, message: "101 build secrets given, at most 100 allowed"},
		{name: "classic builder", g: g, spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC, SealNonce: n, Secrets: []*kilnv1.SealedSecret{sealV(k, "npm", "a")}},
			code: codes.InvalidArgument, message: "need the BuildKit builder"},
		{name: "unknown builder", g: g, spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder(42)},
			code: codes.InvalidArgument, message: "builder 42 is not known"},
		{name: "farm without a secrets key", g: noKey, spec: &kilnv1.BuildSpec{SealNonce: n, Secrets: []*kilnv1.SealedSecret{sealV(k, "npm", "a")}},
			code: codes.FailedPrecondition, message: "this farm has no secrets key configured: set --secrets-public-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.g.client.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Spec: tt.spec, Context: tt.g.ref})
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.message) {
				t.Fatalf("StartBuild = %v, want %s containing %q", err, tt.code, tt.message)
			}
			for _, s := range tt.spec.Secrets {
				if len(s.Sealed) >= 16 && (strings.Contains(st.Message(), string(s.Sealed)) ||
					strings.Contains(st.Message(), base64.StdEncoding.EncodeToString(s.Sealed)[:16]) ||
					strings.Contains(st.Message(), hex.EncodeToString(s.Sealed)[:16])) {
					t.Errorf("the error holds the sealed bytes of %q", s.Id)
				}
			}
		})
	}
	if n := g.countBuilds(t) + noKey.countBuilds(t); n != 0 {
		t.Errorf("%d builds stored from refused requests", n)
	}
}

// TestBuildsWithSecretsAreNeverMerged: two requests with secrets are two
// builds even when everything else is equal, and neither joins nor is
// joined by a build without secrets.
func TestBuildsWithSecretsAreNeverMerged(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	spec := func(nonce []byte, secrets ...*kilnv1.SealedSecret) *kilnv1.BuildSpec {
		return &kilnv1.BuildSpec{Tags: []string{"app:merge"}, SealNonce: nonce, Secrets: secrets}
	}
	plain1 := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(nil)})
	plain2 := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(nil)})
	if plain1.Id != plain2.Id {
		t.Fatalf("identical requests without secrets were not merged (%s, %s): the test proves nothing", plain1.Id, plain2.Id)
	}
	n1, n2, n3 := newNonce(t), newNonce(t), newNonce(t)
	s := sealFor(t, k, n1, "npm", "caller one's token")
	withSecret1 := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(n1, s)})
	withSecret2 := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(n2, s)}) // the very same sealed bytes (which will not open for n2)
	withSecret3 := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(n3, sealFor(t, k, n3, "npm", "caller two's token"))})
	ids := map[string]bool{plain1.Id: true, withSecret1.Id: true, withSecret2.Id: true, withSecret3.Id: true}
	if len(ids) != 4 {
		t.Fatalf("builds with secrets were merged: plain %s, with secrets %s %s %s", plain1.Id, withSecret1.Id, withSecret2.Id, withSecret3.Id)
	}
	if n := g.countBuilds(t); n != 4 {
		t.Fatalf("%d builds stored, want 4", n)
	}
}

// TestIdempotencyWithResealedSecrets: a retry re-seals its secrets, so the
// bytes differ; it still means the same build. Other secret ids do not.
func TestIdempotencyWithResealedSecrets(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	req := func(secrets ...*kilnv1.SealedSecret) *kilnv1.StartBuildRequest {
		nonce := newNonce(t) // a retry seals anew, for a new nonce
		for i, s := range secrets {
			secrets[i] = sealFor(t, k, nonce, s.Id, string(s.Sealed))
		}
		return &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"app:idem"}, SealNonce: nonce, Secrets: secrets}, IdempotencyKey: "ci-job-7"}
	}
	plain := func(id, value string) *kilnv1.SealedSecret {
		return &kilnv1.SealedSecret{Id: id, Sealed: []byte(value)}
	}
	first := g.start(t, req(plain("npm", "tok"), plain("aws", "creds")))
	retry := g.start(t, req(plain("npm", "tok"), plain("aws", "creds")))
	if retry.Id != first.Id {
		t.Fatalf("a retry with re-sealed secrets started build %s, want %s", retry.Id, first.Id)
	}
	for name, r := range map[string]*kilnv1.StartBuildRequest{
		"other secret ids": req(plain("npm", "tok"), plain("gcp", "creds")),
		"no secrets":       req(),
	} {
		_, err := g.client.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Spec: r.Spec, Context: g.ref, IdempotencyKey: r.IdempotencyKey})
		if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "different request") {
			t.Errorf("%s under the same key: %v, want FailedPrecondition", name, err)
		}
	}
	if n := g.countBuilds(t); n != 1 {
		t.Fatalf("%d builds stored, want 1", n)
	}
}

// TestSecretsStaySealed: the build record in KV holds the secrets sealed,
// as an agent opens them, and no message on NATS, no log line and no API
// response holds the plaintext; clients get the secret ids back without
// the sealed bytes, and logs name the ids.
func TestSecretsStaySealed(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	var seen [][]byte
	msgs := make(chan *nats.Msg, 4096)
	sub, err := g.conn.NC.ChanSubscribe(">", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	const plaintext = "s3cr3t-npm-token-0123456789"
	nonce := newNonce(t)
	s := sealFor(t, k, nonce, "npm_token", plaintext)
	b := g.start(t, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"app:sealed"}, SealNonce: nonce, Secrets: []*kilnv1.SealedSecret{s}}})

	if err := g.conn.NC.Flush(); err != nil { // every message so far is in msgs
		t.Fatal(err)
	}
	for len(msgs) > 0 {
		seen = append(seen, (<-msgs).Data)
	}
	sawRecord := false
	for _, data := range seen {
		if bytes.Contains(data, []byte(plaintext)) {
			t.Fatalf("a NATS message holds the plaintext: %q", data)
		}
		sawRecord = sawRecord || bytes.Contains(data, s.Sealed)
	}
	if !sawRecord {
		t.Fatal("did not see the build record go over NATS: the check above proves nothing")
	}

	kv, err := g.conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), b.Id)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(e.Value(), []byte(plaintext)) {
		t.Fatal("the build record in KV holds the plaintext")
	}
	rec := &kilnv1.Build{}
	if err := bus.Decode(e.Value(), rec); err != nil {
		t.Fatal(err)
	}
	got := rec.GetSpec().GetSecrets()
	if len(got) != 1 || got[0].Id != "npm_token" || got[0].KeyId != k.KeyID() {
		t.Fatalf("record's secrets %v", got)
	}
	opened, err := k.Open(seal.Binding{Tenant: rec.Tenant, Nonce: rec.Spec.SealNonce, ID: got[0].Id}, got[0].Sealed) // what the agent does
	if err != nil || string(opened) != plaintext {
		t.Fatalf("the agent's key does not open the stored secret: %v", err)
	}

	for name, resp := range map[string]*kilnv1.Build{"StartBuild": b, "GetBuild": getBuild(t, g, b.Id)} {
		secrets := resp.GetSpec().GetSecrets()
		if len(secrets) != 1 || secrets[0].Id != "npm_token" || len(secrets[0].Sealed) != 0 {
			t.Errorf("%s returned secrets %v, want the id without the sealed bytes", name, secrets)
		}
	}
	list, err := g.client.ListBuilds(t.Context(), &kilnv1.ListBuildsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Builds) != 1 || len(list.Builds[0].GetSpec().GetSecrets()[0].GetSealed()) != 0 {
		t.Errorf("ListBuilds returned the sealed bytes")
	}

	logs := g.logs.String()
	if !strings.Contains(logs, `"secrets":["npm_token"]`) {
		t.Errorf("the build-queued log line does not name the secret ids:\n%s", logs)
	}
	for _, leak := range []string{plaintext, base64.StdEncoding.EncodeToString(s.Sealed)[:24], hex.EncodeToString(s.Sealed)[:24]} {
		if strings.Contains(logs, leak) {
			t.Errorf("the logs hold %q:\n%s", leak, logs)
		}
	}
}

func getBuild(t *testing.T, g *testGateway, id string) *kilnv1.Build {
	t.Helper()
	resp, err := g.client.GetBuild(t.Context(), &kilnv1.GetBuildRequest{BuildId: id})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Build
}

func TestSecretsKeyFlags(t *testing.T) {
	k := newKey(t)
	pub := k.PublicKey()
	dir := t.TempDir()
	keyFile := dir + "/secrets.key"
	if _, err := sealed.LoadOrCreatePrivateKey(keyFile); err != nil {
		t.Fatal(err)
	}
	fromFile, _ := sealed.LoadPrivateKey(keyFile)
	tests := []struct {
		name  string
		flags SecretsKeyFlags
		want  *sealed.PublicKey
		err   string
	}{
		{name: "none"},
		{name: "public key", flags: SecretsKeyFlags{PublicKey: pub.String()}, want: &pub},
		{name: "key file", flags: SecretsKeyFlags{KeyFile: keyFile}, want: publicOf(fromFile)},
		{name: "both", flags: SecretsKeyFlags{PublicKey: pub.String(), KeyFile: keyFile}, err: "not both"},
		{name: "bad public key", flags: SecretsKeyFlags{PublicKey: "abc"}, err: "--secrets-public-key: "},
		{name: "missing key file", flags: SecretsKeyFlags{KeyFile: dir + "/missing"}, err: "--secrets-key-file: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.Load()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Load = %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Load = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCopiedSealedSecret: a sealed secret copied out of build A's record
// into build B's spec is useless. With B's own nonce it is accepted but
// opens to nothing for B (the agent opens with B's tenant, nonce and the
// secret's id); with A's nonce too, the gateway refuses B (nonce reuse)
// and stores nothing, while an idempotent retry of A still gets A back.
func TestCopiedSealedSecret(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	const plaintext = "npm-token-of-build-a-0123"
	nonceA := newNonce(t)
	a := g.start(t, &kilnv1.StartBuildRequest{
		Spec:           &kilnv1.BuildSpec{Tags: []string{"app:a"}, SealNonce: nonceA, Secrets: []*kilnv1.SealedSecret{sealFor(t, k, nonceA, "npm", plaintext)}},
		IdempotencyKey: "job-a",
	})
	recA := record(t, g, a.Id)
	copied := recA.Spec.Secrets[0]

	// Another nonce: accepted (the gateway cannot open it), opens to nothing.
	nonceB := newNonce(t)
	b := g.start(t, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"app:b"}, SealNonce: nonceB, Secrets: []*kilnv1.SealedSecret{copied}}})
	recB := record(t, g, b.Id)
	v, err := k.Open(seal.Binding{Tenant: recB.Tenant, Nonce: recB.Spec.SealNonce, ID: recB.Spec.Secrets[0].Id}, recB.Spec.Secrets[0].Sealed)
	if !errors.Is(err, seal.ErrWrongBinding) || v != nil {
		t.Fatalf("the copied secret opened in build B: %v", err)
	}
	// Moved to another id of A's own nonce: opens to nothing either.
	if _, err := k.Open(seal.Binding{Tenant: recA.Tenant, Nonce: nonceA, ID: "other"}, copied.Sealed); !errors.Is(err, seal.ErrWrongBinding) {
		t.Fatalf("the secret opened under another id: %v", err)
	}
	// Another tenant: opens to nothing.
	if _, err := k.Open(seal.Binding{Tenant: "someone-else", Nonce: nonceA, ID: "npm"}, copied.Sealed); !errors.Is(err, seal.ErrWrongBinding) {
		t.Fatalf("the secret opened for another tenant: %v", err)
	}

	// A's nonce too: refused before anything is stored, whatever else the
	// spec says, with or without an idempotency key of its own.
	before := g.countBuilds(t)
	for name, req := range map[string]*kilnv1.StartBuildRequest{
		"same spec":               {Spec: &kilnv1.BuildSpec{Tags: []string{"app:a"}, SealNonce: nonceA, Secrets: []*kilnv1.SealedSecret{copied}}},
		"other tags":              {Spec: &kilnv1.BuildSpec{Tags: []string{"app:c"}, SealNonce: nonceA, Secrets: []*kilnv1.SealedSecret{copied}}},
		"registry credential":     {Spec: &kilnv1.BuildSpec{Tags: []string{"app:c"}, SealNonce: nonceA, RegistryAuth: []*kilnv1.SealedSecret{{Id: "ghcr.io", Sealed: copied.Sealed, KeyId: copied.KeyId}}}},
		"another idempotency key": {Spec: &kilnv1.BuildSpec{Tags: []string{"app:c"}, SealNonce: nonceA, Secrets: []*kilnv1.SealedSecret{copied}}, IdempotencyKey: "job-c"},
	} {
		req.Context = g.ref
		_, err := g.client.StartBuild(t.Context(), req)
		if st, _ := status.FromError(err); st.Code() != codes.AlreadyExists || !strings.Contains(st.Message(), "seal_nonce was already used by another build") {
			t.Errorf("%s with build A's nonce: %v, want AlreadyExists", name, err)
		}
	}
	if n := g.countBuilds(t); n != before {
		t.Fatalf("%d builds stored after the refusals, want %d", n, before)
	}
	// The refused request's idempotency key was not kept: it can start a
	// build of its own, sealed properly.
	nonceC := newNonce(t)
	c := g.start(t, &kilnv1.StartBuildRequest{
		Spec:           &kilnv1.BuildSpec{Tags: []string{"app:c"}, SealNonce: nonceC, Secrets: []*kilnv1.SealedSecret{sealFor(t, k, nonceC, "npm", "c's token")}},
		IdempotencyKey: "job-c",
	})
	if c.Id == a.Id || c.Id == b.Id {
		t.Fatalf("job-c got build %s", c.Id)
	}
	// An idempotent retry of A, with A's nonce, is A: not a reuse.
	retry := g.start(t, &kilnv1.StartBuildRequest{
		Spec:           &kilnv1.BuildSpec{Tags: []string{"app:a"}, SealNonce: nonceA, Secrets: []*kilnv1.SealedSecret{copied}},
		IdempotencyKey: "job-a",
	})
	if retry.Id != a.Id {
		t.Fatalf("an idempotent retry of A got build %s, want %s", retry.Id, a.Id)
	}
}

// TestSealedValuesNeedANonce: sealed values without a seal nonce of at
// least 16 bytes are refused before anything is stored.
func TestSealedValuesNeedANonce(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	s := sealFor(t, k, newNonce(t), "npm", "tok")
	for name, spec := range map[string]*kilnv1.BuildSpec{
		"no nonce":                            {Secrets: []*kilnv1.SealedSecret{s}},
		"short nonce":                         {SealNonce: make([]byte, seal.MinNonceBytes-1), Secrets: []*kilnv1.SealedSecret{s}},
		"registry credential without a nonce": {RegistryAuth: []*kilnv1.SealedSecret{{Id: "ghcr.io", Sealed: s.Sealed, KeyId: s.KeyId}}},
	} {
		_, err := g.client.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Spec: spec, Context: g.ref})
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "needs a fresh random seal_nonce of 16 to 64 bytes") {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if n := g.countBuilds(t); n != 0 {
		t.Fatalf("%d builds stored", n)
	}
}

// record reads a build's record as the agent does, sealed bytes included.
func record(t *testing.T, g *testGateway, id string) *kilnv1.Build {
	t.Helper()
	kv, err := g.conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	b := &kilnv1.Build{}
	if err := bus.Decode(e.Value(), b); err != nil {
		t.Fatal(err)
	}
	return b
}
