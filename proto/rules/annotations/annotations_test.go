package annotations

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []Annotation
		wantErr string
	}{
		{in: "org.opencontainers.image.title=app", want: []Annotation{{Type: Manifest, Key: "org.opencontainers.image.title", Value: "app"}}},
		{in: "manifest:a=b", want: []Annotation{{Type: Manifest, Key: "a", Value: "b"}}},
		{in: "index:a=b=c", want: []Annotation{{Type: Index, Key: "a", Value: "b=c"}}},
		{in: "manifest-descriptor:a=", want: []Annotation{{Type: ManifestDescriptor, Key: "a", Value: ""}}},
		{in: "index-descriptor:a=x y", want: []Annotation{{Type: IndexDescriptor, Key: "a", Value: "x y"}}},
		{in: "manifest[linux/aarch64]:a=b", want: []Annotation{{Type: Manifest, Platform: "linux/arm64", Key: "a", Value: "b"}}},
		{in: "index,manifest:a=b", want: []Annotation{{Type: Index, Key: "a", Value: "b"}, {Type: Manifest, Key: "a", Value: "b"}}},
		{in: "org.example.url=https://x.example/a:b", want: []Annotation{{Type: Manifest, Key: "org.example.url", Value: "https://x.example/a:b"}}},
		{in: "com.example:key=v", want: []Annotation{{Type: Manifest, Key: "com.example:key", Value: "v"}}},
		{in: "novalue", wantErr: "want key=value"},
		{in: "=v", wantErr: "want [type[platform]:]key=value"},
		{in: "manifest:=v", wantErr: "the key is empty"},
		{in: "bad key=v", wantErr: "without spaces"},
		{in: "layer:a=b", wantErr: `unknown type "layer"`},
		{in: "index[linux/amd64]:a=b", wantErr: "platform applies to manifest"},
		{in: "[linux/amd64]:a=b", wantErr: "name the type before the platform"},
		{in: "manifest[windows/amd64]:a=b", wantErr: "Linux images only"},
		{in: "manifest[linux/nope]:a=b", wantErr: "unknown architecture"},
		{in: "a=\xff", wantErr: "not UTF-8"},
		{in: strings.Repeat("k", MaxKeyLen+1) + "=v", wantErr: "at most 256 bytes"},
	} {
		got, err := Parse([]string{tc.in})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, rules.ErrInvalid) && !errors.Is(err, rules.ErrOverLimit) {
				t.Errorf("Parse(%q): error %v matches neither ErrInvalid nor ErrOverLimit", tc.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	many := make([]string, Max+1)
	for i := range many {
		many[i] = "a=b"
	}
	if _, err := Parse(many); !errors.Is(err, rules.ErrOverLimit) {
		t.Errorf("Parse(%d values) = %v; want ErrOverLimit", len(many), err)
	}
}

func TestCheckSpec(t *testing.T) {
	two := []string{"linux/amd64", "linux/arm64"}
	for _, tc := range []struct {
		values    []string
		platforms []string
		attest    bool
		wantErr   string
	}{
		{values: []string{"a=b", "manifest-descriptor:c=d"}},
		{values: []string{"index:a=b"}, wantErr: "index annotations need several --platform values"},
		{values: []string{"index:a=b"}, attest: true},
		{values: []string{"index:a=b", "manifest[linux/arm64]:c=d"}, platforms: two},
		{values: []string{"manifest[linux/s390x]:c=d"}, platforms: two, wantErr: "the build is not for linux/s390x"},
		{values: []string{"manifest[linux/s390x]:c=d"}},
	} {
		err := CheckSpec(tc.values, tc.platforms, tc.attest)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CheckSpec(%q, %q, %v) = %v; want %q", tc.values, tc.platforms, tc.attest, err, tc.wantErr)
		}
	}
}

func TestExporterAttrs(t *testing.T) {
	as, err := Parse([]string{"a=1", "manifest[linux/arm64]:b=2", "manifest[linux/amd64]:c=3", "index:d=4", "manifest-descriptor:e=5", "index-descriptor:f=6"})
	if err != nil {
		t.Fatal(err)
	}
	got := ExporterAttrs(as, "linux/arm64", false)
	want := map[string]string{"annotation-manifest.a": "1", "annotation-manifest.b": "2", "annotation-manifest-descriptor.e": "5"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ExporterAttrs(arm64, no index) = %v; want %v", got, want)
	}
	got = ExporterAttrs(as, "linux/amd64", true)
	want = map[string]string{"annotation-manifest.a": "1", "annotation-manifest.c": "3", "annotation-manifest-descriptor.e": "5",
		"annotation-index.d": "4", "annotation-index-descriptor.f": "6"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ExporterAttrs(amd64, index) = %v; want %v", got, want)
	}
	index, desc := ForIndex(as)
	if !reflect.DeepEqual(index, map[string]string{"d": "4"}) {
		t.Errorf("ForIndex index = %v; want d=4", index)
	}
	if got := desc("linux/arm64"); !reflect.DeepEqual(got, map[string]string{"e": "5"}) {
		t.Errorf("ForIndex descriptor(arm64) = %v; want e=5", got)
	}
}

// FuzzParse: an accepted value gives annotations with a known type, a key
// without spaces, a platform only on manifest types, and exporter
// attributes that name the key after the type's prefix.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"a=b", "index,manifest[linux/arm64]:k=v", "manifest-descriptor:x=", "[x]:a=b", "index:", "a:b:c=d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		as, err := Parse([]string{v})
		if err != nil {
			if !errors.Is(err, rules.ErrInvalid) && !errors.Is(err, rules.ErrOverLimit) {
				t.Fatalf("Parse(%q): error %v of no kind", v, err)
			}
			return
		}
		for _, a := range as {
			switch a.Type {
			case Manifest, ManifestDescriptor:
			case Index, IndexDescriptor:
				if a.Platform != "" {
					t.Fatalf("Parse(%q): %s annotation with platform %q", v, a.Type, a.Platform)
				}
			default:
				t.Fatalf("Parse(%q): type %q", v, a.Type)
			}
			if a.Key == "" || strings.ContainsAny(a.Key, " \t\n=") {
				t.Fatalf("Parse(%q): key %q", v, a.Key)
			}
			attrs := ExporterAttrs([]Annotation{a}, a.Platform, true)
			if attrs["annotation-"+a.Type+"."+a.Key] != a.Value {
				t.Fatalf("Parse(%q): exporter attrs %v lack %+v", v, attrs, a)
			}
		}
	})
}
