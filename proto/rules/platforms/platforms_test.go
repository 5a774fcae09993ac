package platforms

import (
	"errors"
	"slices"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"linux/amd64": "linux/amd64", "linux/x86_64": "linux/amd64", "LINUX/AARCH64": "linux/arm64",
		"linux/arm64/v8": "linux/arm64", "arm64": "linux/arm64", "linux/arm": "linux/arm/v7", " linux/386 ": "linux/386",
	} {
		got, err := Normalize(in)
		if err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "windows/amd64", "linux/sparc", "linux/"} {
		if _, err := Normalize(in); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Normalize(%q) = %v; want ErrInvalid", in, err)
		}
	}
}

func TestParse(t *testing.T) {
	got, err := Parse([]string{"linux/amd64,linux/arm64", "linux/x86_64"})
	if err != nil || !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("Parse = %v, %v", got, err)
	}
	if _, err := Parse([]string{"linux/amd64,"}); err == nil {
		t.Fatal("Parse accepted an empty platform")
	}
	if err := Check([]string{"linux/amd64", "linux/amd64"}); err == nil {
		t.Fatal("Check accepted a duplicate")
	}
	if err := Check([]string{"linux/x86_64"}); err == nil {
		t.Fatal("Check accepted an unnormalised platform")
	}
	if err := Check(got); err != nil {
		t.Fatalf("Check(%v) = %v", got, err)
	}
}

func TestNativeAndEmulated(t *testing.T) {
	if got := Native("linux", "x86_64"); got != "linux/amd64" {
		t.Fatalf("Native = %q", got)
	}
	if got := Native("", "x86_64"); got != "" {
		t.Fatalf("Native without OS = %q", got)
	}
	if got := FromBinfmt("qemu-aarch64"); got != "linux/arm64" {
		t.Fatalf("FromBinfmt = %q", got)
	}
	got := Emulated([]string{"linux/amd64"}, []string{"linux/amd64", "linux/arm64", "", "linux/arm64"})
	if !slices.Equal(got, []string{"linux/arm64"}) {
		t.Fatalf("Emulated = %v", got)
	}
}

func TestCheckSpec(t *testing.T) {
	two := []string{"linux/amd64", "linux/arm64"}
	for _, tc := range []struct {
		name           string
		ps             []string
		push, exported bool
		wantErr        bool
	}{
		{"several platforms, nowhere to go", two, false, false, true},
		{"one platform without push", []string{"linux/arm64"}, false, false, false},
		{"several platforms pushed", two, true, false, false},
		{"several platforms' files exported", two, false, true, false},
	} {
		err := CheckSpec(tc.ps, tc.push, tc.exported)
		if tc.wantErr != (err != nil) || err != nil && !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
