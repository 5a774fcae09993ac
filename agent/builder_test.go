package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestChooseBuilder(t *testing.T) {
	bk, classic, none := kilnv1.Builder_BUILDER_BUILDKIT, kilnv1.Builder_BUILDER_CLASSIC, kilnv1.Builder_BUILDER_UNSPECIFIED
	secret := []*kilnv1.SealedSecret{{Id: "tok"}}
	manifest := &kilnv1.ContextRef{Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
	tar := &kilnv1.ContextRef{Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}
	for _, tt := range []struct {
		engine  []string
		flag    string
		spec    *kilnv1.BuildSpec
		ref     *kilnv1.ContextRef
		want    kilnv1.Builder
		wantErr string
	}{
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{}, manifest, bk, ""},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Builder: classic}, manifest, classic, ""},
		{[]string{"buildkit", "classic"}, "classic", &kilnv1.BuildSpec{}, manifest, classic, ""},
		{[]string{"buildkit", "classic"}, "classic", &kilnv1.BuildSpec{Builder: bk}, manifest, none, "offers only the classic builder"},
		{[]string{"classic"}, "auto", &kilnv1.BuildSpec{Secrets: secret}, manifest, none, "build secrets need BuildKit"},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Secrets: secret}, manifest, bk, ""},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Secrets: secret, Builder: classic}, manifest, none, "need the BuildKit builder"},
		{[]string{"buildkit"}, "", &kilnv1.BuildSpec{Builder: classic}, manifest, none, "does not offer"},
		{nil, "", &kilnv1.BuildSpec{}, manifest, none, "no builder"},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{}, tar, classic, ""},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Builder: bk}, tar, bk, ""},
		// Cache options need BuildKit, as secrets do.
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{CacheTo: []*kilnv1.CacheOption{{Type: "inline"}}}, tar, bk, ""},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{CacheFrom: []*kilnv1.CacheOption{{Type: "registry"}}, Builder: classic}, manifest, none, "cache options"},
		{[]string{"classic"}, "", &kilnv1.BuildSpec{CacheFrom: []*kilnv1.CacheOption{{Type: "registry"}}}, manifest, none, "cache options (--cache-from, --cache-to) need BuildKit"},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "local"}}, Builder: classic}, manifest, none, "exported outputs (--output local) need the BuildKit builder"},
		{[]string{"buildkit", "classic"}, "", &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "oci"}}}, tar, bk, ""},
	} {
		a := &Agent{cfg: Config{Name: "a1", Builder: tt.flag}, info: engine.Info{Builders: tt.engine, Kind: engine.KindDocker}}
		got, err := a.chooseBuilder(tt.spec, tt.ref)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("engine %v flag %q spec %v: err %v, want one saying %q", tt.engine, tt.flag, tt.spec, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("engine %v flag %q spec %v: %v, %v; want %v", tt.engine, tt.flag, tt.spec, got, err, tt.want)
		}
	}
}

// TestChooseBuilderOnStandaloneBuildKit: a standalone BuildKit engine has
// no classic builder, and a build that needs one is told so by name.
func TestChooseBuilderOnStandaloneBuildKit(t *testing.T) {
	a := &Agent{cfg: Config{Name: "bk1"}, info: engine.Info{Builders: []string{"buildkit"}, Kind: engine.KindBuildKit}}
	manifest := &kilnv1.ContextRef{Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
	tar := &kilnv1.ContextRef{Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}
	if got, err := a.chooseBuilder(&kilnv1.BuildSpec{}, manifest); err != nil || got != kilnv1.Builder_BUILDER_BUILDKIT {
		t.Fatalf("a manifest build: %v, %v; want BuildKit", got, err)
	}
	for _, tt := range []struct {
		spec *kilnv1.BuildSpec
		ref  *kilnv1.ContextRef
		want string
	}{
		{&kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC}, manifest, "--builder classic), and agent \"bk1\" drives a standalone BuildKit engine, which has no classic builder"},
		{&kilnv1.BuildSpec{}, tar, "context is a tar"},
	} {
		if _, err := a.chooseBuilder(tt.spec, tt.ref); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("spec %v ref %v: %v, want an error saying %q", tt.spec, tt.ref, err, tt.want)
		}
	}
}

func TestMaskerHidesSecretsInLinesAndErrors(t *testing.T) {
	m := newMasker(map[string][]byte{"a": []byte("hunter2"), "b": []byte("line-one\nline-two\n"), "empty": nil, "blank": []byte("  ")})
	for in, want := range map[string]string{
		"the token is hunter2!":   "the token is ****!",
		"line-one":                "****",
		"x line-one\nline-two y":  "x **** y",
		"nothing secret here  ok": "nothing secret here  ok",
		"hunter2hunter2":          "********",
	} {
		if got := m.line(in); got != want {
			t.Errorf("line(%q) = %q, want %q", in, got, want)
		}
	}
	err := m.err(&engine.BuildError{Step: 2, Instruction: "RUN echo hunter2", Message: "failed: hunter2"})
	var be *engine.BuildError
	if !errors.As(err, &be) || be.Step != 2 || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("masked error %v", err)
	}
	if got := m.err(errors.New("plain hunter2")).Error(); got != "plain ****" {
		t.Fatalf("masked plain error %q", got)
	}
	var nilMasker *masker
	if nilMasker.line("hunter2") != "hunter2" || newMasker(nil) != nil {
		t.Fatal("a masker without secrets must change nothing")
	}
}
