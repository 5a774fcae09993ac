package outputs

import (
	"errors"
	"maps"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Entry
	}{
		{"out", Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: "out"}},
		{"./a/b", Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: "./a/b"}},
		{"-", Entry{Type: TypeTar, Attrs: map[string]string{}, Dest: "-"}},
		// buildx takes a single field without type= as a path, "=" or not.
		{"dest=x", Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: "dest=x"}},
		{"type=local,dest=out", Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: "out"}},
		{"type=tar,dest=-", Entry{Type: TypeTar, Attrs: map[string]string{}, Dest: "-"}},
		{"type=oci,dest=img.tar,name=app", Entry{Type: TypeOCI, Attrs: map[string]string{"name": "app"}, Dest: "img.tar"}},
		{" DEST =a,type=docker", Entry{Type: TypeDocker, Attrs: map[string]string{}, Dest: "a"}},
		{`type=local,"dest=a,b"`, Entry{Type: TypeLocal, Attrs: map[string]string{}, Dest: "a,b"}},
		{"type=registry", Entry{Type: TypeImage, Attrs: map[string]string{"push": "true"}}},
		{"type=registry,push=false", Entry{Type: TypeImage, Attrs: map[string]string{"push": "false"}}},
		{"type=image", Entry{Type: TypeImage, Attrs: map[string]string{}}},
		{"type=cacheonly", Entry{Type: TypeCacheOnly, Attrs: map[string]string{}}},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if got.Type != tc.want.Type || got.Dest != tc.want.Dest || !maps.Equal(got.Attrs, tc.want.Attrs) {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, *got, tc.want)
		}
	}
	for _, in := range []string{"", "type=local,dest", "dest=a,name=b", `type="local`, "type=local,dest="} {
		if _, err := Parse(in); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want an invalid error", in, err)
		}
	}
}

func TestParsePlan(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want Plan
	}{
		{nil, Plan{}},
		{[]string{"out"}, Plan{Output: &kilnv1.Output{Type: TypeLocal}, Dest: "out"}},
		{[]string{"-"}, Plan{Output: &kilnv1.Output{Type: TypeTar}, Dest: "-"}},
		{[]string{"type=registry"}, Plan{Push: true}},
		{[]string{"type=image,push=true"}, Plan{Push: true}},
		{[]string{"type=image,push=1"}, Plan{Push: true}},
		{[]string{"type=image"}, Plan{}},
		{[]string{"type=registry,push=false"}, Plan{}},
		{[]string{"type=cacheonly"}, Plan{Output: &kilnv1.Output{Type: TypeCacheOnly}}},
		{[]string{"type=registry", "type=tar,dest=x.tar"}, Plan{Push: true, Output: &kilnv1.Output{Type: TypeTar}, Dest: "x.tar"}},
		{[]string{"type=docker,dest=-,name=app:1"}, Plan{Output: &kilnv1.Output{Type: TypeDocker, Attrs: map[string]string{"name": "app:1"}}, Dest: "-"}},
		{[]string{"type=oci,dest=o.tar"}, Plan{Output: &kilnv1.Output{Type: TypeOCI}, Dest: "o.tar"}},
	} {
		got, err := ParsePlan(tc.in)
		if err != nil {
			t.Errorf("ParsePlan(%q): %v", tc.in, err)
			continue
		}
		if got.Push != tc.want.Push || got.Dest != tc.want.Dest || String(got.Output) != String(tc.want.Output) || (got.Output == nil) != (tc.want.Output == nil) {
			t.Errorf("ParsePlan(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"type=local,dest=a", "type=tar,dest=b"}, "one output per build"},
		{[]string{"type=s3,dest=a"}, `"s3" is not an output type`},
		{[]string{"type=LOCAL,dest=a"}, "not an output type"},
		{[]string{"type=local"}, "needs dest=DIR"},
		{[]string{"type=tar"}, "needs dest=FILE"},
		{[]string{"type=oci"}, "needs dest=FILE"},
		{[]string{"type=docker"}, "docker load"},
		{[]string{"type=local,dest=-"}, "not a directory"},
		{[]string{"type=cacheonly,dest=x"}, "takes no dest"},
		{[]string{"type=local,dest=a,platform-split=false"}, `does not take "platform-split"`},
		{[]string{"type=oci,dest=a,tar=false"}, `does not take "tar"`},
		{[]string{"type=registry,name=r/a"}, "name the image with --tag"},
		{[]string{"type=image,push=true,compression=zstd"}, `does not take "compression"`},
		{[]string{"type=image,push=maybe"}, "want true or false"},
		{[]string{"type=registry,dest=x"}, "takes no dest"},
	} {
		_, err := ParsePlan(tc.in)
		if !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePlan(%q) = %v, want an invalid error with %q", tc.in, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, o := range []*kilnv1.Output{
		{Type: TypeLocal}, {Type: TypeTar}, {Type: TypeCacheOnly}, {Type: TypeOCI, Attrs: map[string]string{"name": "a"}}, {Type: TypeDocker},
	} {
		if err := Validate(o); err != nil {
			t.Errorf("Validate(%s): %v", String(o), err)
		}
	}
	for _, tc := range []struct {
		o    *kilnv1.Output
		want string
	}{
		{nil, "empty"},
		{&kilnv1.Output{}, "not an output type"},
		{&kilnv1.Output{Type: TypeRegistry}, "is a push"},
		{&kilnv1.Output{Type: TypeImage}, "is a push"},
		{&kilnv1.Output{Type: TypeLocal, Attrs: map[string]string{"dest": "/etc"}}, "stays on the client"},
		{&kilnv1.Output{Type: TypeTar, Attrs: map[string]string{"x": "y"}}, "takes no attributes but dest"},
		{&kilnv1.Output{Type: TypeOCI, Attrs: map[string]string{"name": strings.Repeat("a", MaxValueLen+1)}}, "over 4096 bytes"},
	} {
		if err := Validate(tc.o); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%v) = %v, want an invalid error with %q", tc.o, err, tc.want)
		}
	}
	if err := ValidateAll([]*kilnv1.Output{{Type: TypeLocal}, {Type: TypeTar}}); err == nil {
		t.Error("ValidateAll accepted two outputs")
	}
	if err := ValidateAll(nil); err != nil {
		t.Errorf("ValidateAll(nil): %v", err)
	}
}

func TestCheckPlatforms(t *testing.T) {
	for _, typ := range []string{TypeOCI, TypeDocker} {
		if err := CheckPlatforms([]*kilnv1.Output{{Type: typ}}, 2); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "one image") {
			t.Errorf("type=%s for 2 platforms: %v", typ, err)
		}
		if err := CheckPlatforms([]*kilnv1.Output{{Type: typ}}, 1); err != nil {
			t.Errorf("type=%s for 1 platform: %v", typ, err)
		}
	}
	for _, typ := range []string{TypeLocal, TypeTar, TypeCacheOnly} {
		if err := CheckPlatforms([]*kilnv1.Output{{Type: typ}}, 3); err != nil {
			t.Errorf("type=%s for 3 platforms: %v", typ, err)
		}
	}
}

func TestPlatformDir(t *testing.T) {
	if got := PlatformDir("linux/arm/v7"); got != "linux_arm_v7" {
		t.Errorf("PlatformDir = %q", got)
	}
}

// FuzzParsePlan: whatever the values, an accepted plan's output passes
// the gateway's Validate, never carries a dest, and has a dest where its
// type writes one.
func FuzzParsePlan(f *testing.F) {
	for _, s := range []string{"out", "-", "type=local,dest=a", "type=registry", `type=oci,"dest=a,b",name=x`, "type=image,push=0", "type=cacheonly"} {
		f.Add(s, "type=registry")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		p, err := ParsePlan([]string{a, b})
		if err != nil {
			if !errors.Is(err, rules.ErrInvalid) {
				t.Fatalf("ParsePlan(%q, %q): error %v does not match ErrInvalid", a, b, err)
			}
			return
		}
		if p.Output == nil {
			return
		}
		if err := Validate(p.Output); err != nil {
			t.Fatalf("ParsePlan(%q, %q) gave %s, which Validate refuses: %v", a, b, String(p.Output), err)
		}
		if _, ok := p.Output.Attrs["dest"]; ok {
			t.Fatalf("ParsePlan(%q, %q) put dest on the wire", a, b)
		}
		if (p.Dest == "") != (p.Output.Type == TypeCacheOnly) {
			t.Fatalf("ParsePlan(%q, %q): type=%s with dest %q", a, b, p.Output.Type, p.Dest)
		}
	})
}
