package gateway

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"github.com/kilnbuild/kiln/proto/rules/sshid"
)

// TestStartBuildRefusesBadSSHKeys: ssh keys are checked as secrets are
// (ids, count, sizes, the key they were sealed to, the seal nonce), with
// their own limits, before anything is stored.
func TestStartBuildRefusesBadSSHKeys(t *testing.T) {
	k, other := newKey(t), newKey(t)
	g := startGateway(t, publicOf(k))
	noKey := startGateway(t, nil)
	n := newNonce(t)
	sealK := func(id string) *kilnv1.SealedSecret {
		return sealFor(t, k, n, id, "-----BEGIN OPENSSH PRIVATE KEY-----")
	}
	many := make([]*kilnv1.SealedSecret, sshid.MaxIDs+1)
	for i := range many {
		many[i] = sealK(strings.Repeat("k", i+1))
	}
	tooLarge := &kilnv1.SealedSecret{Id: "default", Sealed: make([]byte, sshid.MaxValueBytes+seal.Overhead+1), KeyId: k.KeyID()}
	half := func(id string) *kilnv1.SealedSecret {
		return &kilnv1.SealedSecret{Id: id, Sealed: make([]byte, sshid.MaxValueBytes/2+seal.Overhead+1), KeyId: k.KeyID()}
	}
	for name, tt := range map[string]struct {
		g       *testGateway
		spec    *kilnv1.BuildSpec
		code    codes.Code
		message string
	}{
		"id given twice":   {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{sealK("default"), sealK("default")}}, codes.InvalidArgument, `ssh id "default" is given twice`},
		"bad id":           {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{sealK("me@host")}}, codes.InvalidArgument, `ssh id "me@host" may hold only letters`},
		"too many":         {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: many}, codes.InvalidArgument, "17 ssh ids given, at most 16 allowed"},
		"too large":        {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{tooLarge}}, codes.InvalidArgument, `ssh key "default" is 65537 bytes, over the limit of 65536 bytes`},
		"too large in all": {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{half("a"), half("b")}}, codes.InvalidArgument, "the build's ssh ids are 65538 bytes together, over the limit of 65536 bytes"},
		"not sealed":       {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{{Id: "default", Sealed: []byte("-----BEGIN"), KeyId: k.KeyID()}}}, codes.InvalidArgument, `ssh key "default": sealed value is 10 bytes, shorter than`},
		"classic builder":  {g, &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC, SealNonce: n, Ssh: []*kilnv1.SealedSecret{sealK("default")}}, codes.InvalidArgument, "--ssh keys need the BuildKit builder"},
		"no nonce":         {g, &kilnv1.BuildSpec{Ssh: []*kilnv1.SealedSecret{sealK("default")}}, codes.InvalidArgument, "needs a fresh random seal_nonce of 16 to 64 bytes"},
		"sealed to another key": {g, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{sealFor(t, other, n, "default", "k")}}, codes.FailedPrecondition,
			`"default" was sealed to key "` + other.KeyID() + `", but the farm's secrets key is ` + k.KeyID()},
		"farm without a secrets key": {noKey, &kilnv1.BuildSpec{SealNonce: n, Ssh: []*kilnv1.SealedSecret{sealK("default")}}, codes.FailedPrecondition, "this farm has no secrets key configured"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tt.g.client.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Spec: tt.spec, Context: tt.g.ref})
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.message) {
				t.Fatalf("StartBuild = %v, want %s containing %q", err, tt.code, tt.message)
			}
		})
	}
	if n := g.countBuilds(t) + noKey.countBuilds(t); n != 0 {
		t.Errorf("%d builds stored from refused requests", n)
	}
}

// TestSSHKeysAreSealedValues: a build with ssh keys claims its seal nonce
// (a copy of its keys into another build with its nonce is refused), is
// never merged with an identical build, is the same request when a retry
// re-seals its keys, and its record reaches clients without the sealed
// bytes.
func TestSSHKeysAreSealedValues(t *testing.T) {
	k := newKey(t)
	g := startGateway(t, publicOf(k))
	const pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n"
	spec := func(nonce []byte) *kilnv1.BuildSpec {
		return &kilnv1.BuildSpec{Tags: []string{"app:ssh"}, SealNonce: nonce, Ssh: []*kilnv1.SealedSecret{sealFor(t, k, nonce, "default", pem)}}
	}
	nA := newNonce(t)
	a := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(nA), IdempotencyKey: "job-a"})
	if got := a.GetSpec().GetSsh(); len(got) != 1 || got[0].GetId() != "default" || len(got[0].GetSealed()) != 0 {
		t.Fatalf("the client got ssh keys %v, want the id without the sealed bytes", got)
	}
	rec := record(t, g, a.Id)
	if len(rec.Spec.GetSsh()) != 1 || len(rec.Spec.Ssh[0].Sealed) == 0 || bytes.Contains(rec.Spec.Ssh[0].Sealed, []byte("OPENSSH")) {
		t.Fatal("the build record does not hold the ssh key sealed")
	}

	retry := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(newNonce(t)), IdempotencyKey: "job-a"})
	if retry.Id != a.Id {
		t.Errorf("a retry with re-sealed ssh keys started build %s, want %s", retry.Id, a.Id)
	}
	b := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(newNonce(t))})
	c := g.start(t, &kilnv1.StartBuildRequest{Spec: spec(newNonce(t))})
	if b.Id == c.Id || b.Id == a.Id {
		t.Errorf("builds with ssh keys were merged: %s, %s, %s", a.Id, b.Id, c.Id)
	}
	_, err := g.client.StartBuild(t.Context(), &kilnv1.StartBuildRequest{Context: g.ref, Spec: &kilnv1.BuildSpec{Tags: []string{"app:copy"}, SealNonce: nA, Ssh: rec.Spec.Ssh}})
	if st, _ := status.FromError(err); st.Code() != codes.AlreadyExists {
		t.Errorf("build A's ssh keys and nonce in another build: %v, want AlreadyExists", err)
	}
}
