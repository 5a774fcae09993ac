package tests

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// TestCopiedSealedSecretIsUseless: a client seals a secret for build A
// the way the SDK does (for its tenant and A's seal nonce) and A reads it.
// The same sealed bytes copied into build B's spec with B's own nonce make
// B fail at the agent, naming the secret and never its value; copied with
// A's nonce too, the gateway refuses B before anything is queued. The
// value appears in none of B's events, nor in kilnd's logs and data dir.
func TestCopiedSealedSecretIsUseless(t *testing.T) {
	k := sharedKilnd(t)
	bs, _ := k.client(t)
	ctx := t.Context()
	base := enginetest.BusyboxBase(t)
	secret := "copied-" + uniq() + uniq()

	// The CLI uploads the context (and builds it once, without the secret);
	// A, B and C then reuse its context reference.
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=secret,id=tok echo \"the token is $(cat /run/secrets/tok 2>/dev/null)\" && echo " + uniq() + "\n"})
	meta := filepath.Join(t.TempDir(), "meta.json")
	if r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "--metadata-file", meta, dir); r.code != 0 {
		t.Fatalf("build of the context: %s", r)
	}
	first, err := bs.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: str(metadata(t, meta), "kiln.build.id")})
	if err != nil {
		t.Fatal(err)
	}
	ref := first.GetBuild().GetContext()

	key, err := bs.GetSecretsKey(ctx, &kilnv1.GetSecretsKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := seal.PublicKeyFromBytes(key.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	nonceA, nonceB := newSealNonce(t), newSealNonce(t)
	sealed, err := seal.Seal(pub, seal.Binding{Tenant: key.GetTenant(), Nonce: nonceA, ID: "tok"}, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	sealedA := &kilnv1.SealedSecret{Id: "tok", Sealed: sealed, KeyId: key.GetKeyId()}
	spec := func(nonce []byte) *kilnv1.BuildSpec {
		return &kilnv1.BuildSpec{NoCache: true, Builder: kilnv1.Builder_BUILDER_BUILDKIT, SealNonce: nonce, Secrets: []*kilnv1.SealedSecret{sealedA}}
	}

	// A: sealed for it, so it opens (masked in the log).
	a, err := bs.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: spec(nonceA), Context: ref})
	if err != nil {
		t.Fatalf("start A: %v", err)
	}
	eventsA := watchAll(t, bs, a.GetBuild().GetId(), 0)
	if fin := eventsA[len(eventsA)-1].GetFinished(); fin.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build A ended %v: the secret was not sealed right, and the rest proves nothing", fin)
	}
	logA := eventsText(t, eventsA)
	mustContain(t, logA, "the token is ****", "build A's log (the secret opened, masked)")

	// B: A's sealed secret under B's own nonce fails at the agent.
	b, err := bs.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: spec(nonceB), Context: ref})
	if err != nil {
		t.Fatalf("start B: %v", err)
	}
	eventsB := watchAll(t, bs, b.GetBuild().GetId(), 0)
	fin := eventsB[len(eventsB)-1].GetFinished()
	if fin.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(fin.GetError(), `sealed secret "tok" was sealed for another build or tenant`) {
		t.Fatalf("build B with A's copied secret ended %v, want FAILED naming the copied secret", fin)
	}
	logB := eventsText(t, eventsB)
	if strings.Contains(logB, secret) || strings.Contains(logB, "the token is") {
		t.Fatalf("build B's events show the step that reads the secret, or the secret:\n%s", logB)
	}
	recB, err := bs.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: b.GetBuild().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(recB.GetBuild().GetError(), secret) {
		t.Fatal("build B's record holds the secret")
	}

	// C: A's nonce as well: refused by the gateway, nothing queued.
	before := countBuilds(t, bs)
	_, err = bs.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: spec(nonceA), Context: ref})
	if st, _ := status.FromError(err); st.Code() != codes.AlreadyExists || !strings.Contains(st.Message(), "seal_nonce was already used") {
		t.Fatalf("start C with A's nonce and secret: %v, want AlreadyExists", err)
	}
	if after := countBuilds(t, bs); after != before {
		t.Fatalf("the refused build was queued: %d builds before, %d after", before, after)
	}
	k.mustNotHold(t, "the secret", secret)
}

func newSealNonce(t *testing.T) []byte {
	t.Helper()
	n, err := seal.NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// eventsText renders events as JSON, to search them for a value.
func eventsText(t *testing.T, events []*kilnv1.BuildEvent) string {
	t.Helper()
	var sb strings.Builder
	for _, e := range events {
		data, err := protojson.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		sb.Write(data)
		sb.WriteByte('\n')
	}
	return sb.String()
}
