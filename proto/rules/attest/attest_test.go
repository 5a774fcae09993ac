package attest

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

func TestAttr(t *testing.T) {
	for _, tc := range []struct {
		typ, in string
		value   string
		on      bool
		wantErr string
	}{
		{typ: Provenance, in: ""},
		{typ: Provenance, in: "false"},
		{typ: Provenance, in: "0"},
		{typ: Provenance, in: "true", on: true},
		{typ: Provenance, in: "mode=max", value: "mode=max", on: true},
		{typ: Provenance, in: "mode=min,disabled=false", value: "mode=min", on: true},
		{typ: Provenance, in: "mode=max,disabled=true"},
		{typ: Provenance, in: "mode=all", wantErr: "want min or max"},
		{typ: Provenance, in: "generator=x", wantErr: "do not take generator="},
		{typ: Provenance, in: "type=provenance", wantErr: "belongs to --attest"},
		{typ: Provenance, in: "disabled=maybe", wantErr: "not true or false"},
		{typ: Provenance, in: "yes please", wantErr: "want true, false"},
		{typ: SBOM, in: "generator=127.0.0.1:5000/syft:1", value: "generator=127.0.0.1:5000/syft:1", on: true},
		{typ: SBOM, in: `"generator=a",scan-context=true`, value: "generator=a,scan-context=true", on: true},
		{typ: SBOM, in: "generator=", wantErr: "names the scanner image"},
		{typ: SBOM, in: `"unclosed`, wantErr: "--sbom"},
	} {
		value, on, err := Attr(tc.typ, tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, rules.ErrInvalid) {
				t.Errorf("Attr(%s, %q) = %q, %v, %v; want error containing %q", tc.typ, tc.in, value, on, err, tc.wantErr)
			}
			continue
		}
		if err != nil || value != tc.value || on != tc.on {
			t.Errorf("Attr(%s, %q) = %q, %v, %v; want %q, %v", tc.typ, tc.in, value, on, err, tc.value, tc.on)
		}
	}
}

func TestParseAttest(t *testing.T) {
	for _, tc := range []struct{ in, typ, value, wantErr string }{
		{in: "type=provenance", typ: Provenance, value: "true"},
		{in: "type=provenance,mode=max", typ: Provenance, value: "mode=max"},
		{in: "type=sbom,disabled=true", typ: SBOM, value: "disabled=true"},
		{in: "mode=max", wantErr: "no type="},
		{in: "type=vex", wantErr: `unknown type "vex"`},
	} {
		typ, value, err := ParseAttest(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseAttest(%q) = %q, %q, %v; want error %q", tc.in, typ, value, err, tc.wantErr)
			}
			continue
		}
		if err != nil || typ != tc.typ || value != tc.value {
			t.Errorf("ParseAttest(%q) = %q, %q, %v; want %q, %q", tc.in, typ, value, err, tc.typ, tc.value)
		}
	}
}

func TestParseCall(t *testing.T) {
	for in, want := range map[string]string{"": "", "build": "", "check": "check", "Outline": "outline", "targets": "targets"} {
		if got, err := ParseCall(in); err != nil || got != want {
			t.Errorf("ParseCall(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseCall("lint"); err == nil || !errors.Is(err, rules.ErrInvalid) {
		t.Errorf("ParseCall(lint) = %v; want ErrInvalid", err)
	}
	if RequestID(CallCheck) != "frontend.lint" || RequestID("") != "" {
		t.Errorf("RequestID: check gives %q, build %q", RequestID(CallCheck), RequestID(""))
	}
}

func TestCheckSpecAndFeatures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		spec     *kilnv1.BuildSpec
		features []string
		wantErr  string
	}{
		{name: "plain", spec: &kilnv1.BuildSpec{}},
		{name: "provenance pushed", spec: &kilnv1.BuildSpec{Push: true, Provenance: "mode=max"}, features: []string{FeatureAttestations}},
		{name: "provenance off", spec: &kilnv1.BuildSpec{Provenance: "false", Sbom: "false"}},
		{name: "provenance not pushed", spec: &kilnv1.BuildSpec{Provenance: "true"}, wantErr: "add --push"},
		{name: "sbom multi-platform", spec: &kilnv1.BuildSpec{Push: true, Sbom: "true", Platforms: []string{"linux/amd64", "linux/arm64"}}, features: []string{FeatureAttestations}},
		{name: "check", spec: &kilnv1.BuildSpec{Call: "check"}, features: []string{FeatureCall}},
		{name: "check pushed", spec: &kilnv1.BuildSpec{Call: "check", Push: true}, wantErr: "builds nothing"},
		{name: "bad call", spec: &kilnv1.BuildSpec{Call: "print"}, wantErr: "want build, check"},
		{name: "annotations", spec: &kilnv1.BuildSpec{Annotations: []string{"a=b"}}, features: []string{"annotations"}},
		{name: "index annotation with provenance", spec: &kilnv1.BuildSpec{Push: true, Provenance: "true", Annotations: []string{"index:a=b"}}, features: []string{"annotations", FeatureAttestations}},
		{name: "index annotation alone", spec: &kilnv1.BuildSpec{Annotations: []string{"index:a=b"}}, wantErr: "index annotations need"},
	} {
		err := CheckSpec(tc.spec)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: CheckSpec = %v; want %q", tc.name, err, tc.wantErr)
		}
		if err == nil && !reflect.DeepEqual(Features(tc.spec), tc.features) {
			t.Errorf("%s: Features = %q; want %q", tc.name, Features(tc.spec), tc.features)
		}
	}
}

// FuzzAttr: an accepted value that asks for the attestation gives
// attributes the type takes, none of them type= or disabled=.
func FuzzAttr(f *testing.F) {
	for _, s := range []string{"true", "mode=max", "generator=a,scan-stage=true", `"a=b,c"`, "disabled=true"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, typ := range []string{Provenance, SBOM} {
			value, on, err := Attr(typ, v)
			if err != nil || !on || value == "" {
				continue
			}
			fields, err := csvFields(value)
			if err != nil {
				t.Fatalf("Attr(%s, %q) = %q, not CSV: %v", typ, v, value, err)
			}
			for _, f := range fields {
				k, _, _ := strings.Cut(f, "=")
				if k == "type" || k == "disabled" {
					t.Fatalf("Attr(%s, %q) = %q keeps %s", typ, v, value, k)
				}
			}
		}
	})
}
