package cacheopt

import (
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestParseAndValidate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		use     Use
		typ     string
		ref     string
		wantErr string
	}{
		{in: "127.0.0.1:5000/team/app:cache", use: From, typ: "registry", ref: "127.0.0.1:5000/team/app:cache"},
		{in: "type=registry,ref=127.0.0.1:5000/app:buildcache,mode=max", use: To, typ: "registry", ref: "127.0.0.1:5000/app:buildcache"},
		{in: "type=registry,ref=r.example/app", use: From, typ: "registry", ref: "r.example/app"},
		{in: "ref=r.example/app:c", use: From, typ: "registry", ref: "r.example/app:c"},
		{in: "type=inline", use: To, typ: "inline"},
		{in: "type=inline", use: From, wantErr: "not a cache source"},
		{in: "type=registry,ref=r.example/app,mode=max", use: From, wantErr: "takes no mode"},
		{in: "type=registry,ref=r.example/app,mode=all", use: To, wantErr: "want min or max"},
		{in: "type=registry", use: To, wantErr: "needs ref="},
		{in: "type=registry,ref=Not A Ref", use: To, wantErr: "not an image reference"},
		{in: "type=local,dest=/tmp/x", use: To, wantErr: "type=local"},
		{in: "type=gha", use: From, wantErr: "type=gha"},
		{in: "type=weird", use: From, wantErr: "not a cache type"},
		{in: "type=registry,ref=r.example/a,colour=red", use: To, wantErr: "does not take"},
		{in: "type=registry,ref=a,ref=b", use: To, wantErr: "twice"},
		{in: "mode=max", use: To, wantErr: "no type="},
		{in: "", use: To, wantErr: "empty"},
		{in: `type=registry,"ref=r.example/a"`, use: To, typ: "registry", ref: "r.example/a"},
	} {
		o, err := Parse(tc.in)
		if err == nil {
			err = Validate(o, tc.use)
		}
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one saying %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if o.Type != tc.typ || o.Attrs["ref"] != tc.ref {
			t.Errorf("%q: got type %q ref %q, want %q %q", tc.in, o.Type, o.Attrs["ref"], tc.typ, tc.ref)
		}
	}
}

func TestHostsAndNeeds(t *testing.T) {
	from := []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "127.0.0.1:5000/a:c"}}, {Type: "registry", Attrs: map[string]string{"ref": "team/app:c"}}}
	to := []*kilnv1.CacheOption{{Type: "inline"}, {Type: "registry", Attrs: map[string]string{"ref": "GHCR.io/x/y:c"}}}
	got := strings.Join(Hosts(from, to), ",")
	if got != "127.0.0.1:5000,docker.io,ghcr.io" {
		t.Errorf("Hosts = %s", got)
	}
	if !NeedsRegistryExport(to) || NeedsRegistryExport(to[:1]) {
		t.Error("NeedsRegistryExport wrong")
	}
	if Mode(to[1]) != ModeMin {
		t.Error("default mode is min")
	}
}

func TestWarmRef(t *testing.T) {
	ref := WarmRef("127.0.0.1:5000/kiln-cache/", "Team_A", strings.Repeat("ab", 100))
	if !strings.HasPrefix(ref, "127.0.0.1:5000/kiln-cache/team-a:") || len(ref) != len("127.0.0.1:5000/kiln-cache/team-a:")+128 {
		t.Errorf("WarmRef = %s", ref)
	}
	o := &kilnv1.CacheOption{Type: "registry", Attrs: map[string]string{"ref": ref}}
	if err := Validate(o, To); err != nil {
		t.Errorf("WarmRef's ref does not validate: %v", err)
	}
	for _, p := range []string{"127.0.0.1:5000/kiln-cache", "registry.example/a/b", ""} {
		if err := ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q): %v", p, err)
		}
	}
	for _, p := range []string{"127.0.0.1:5000/kiln-cache:tag", "Bad Prefix"} {
		if err := ValidPrefix(p); err == nil {
			t.Errorf("ValidPrefix(%q) accepted", p)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"type=registry,ref=a/b:c,mode=max", "a/b", `type="inline"`, "type=registry,ref=\"x,y\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := Parse(s)
		if err != nil {
			return
		}
		if o.Type == "" {
			t.Fatalf("Parse(%q) gave no type", s)
		}
		_ = Validate(o, To)
		_ = Validate(o, From)
	})
}
