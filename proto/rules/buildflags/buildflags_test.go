package buildflags

import (
	"errors"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
)

func TestParseNetwork(t *testing.T) {
	for in, want := range map[string]string{"": "", "default": "", "none": "none", "host": "host"} {
		if got, err := ParseNetwork(in); err != nil || got != want {
			t.Errorf("ParseNetwork(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"bridge", "mynet", "HOST", "container:x"} {
		if _, err := ParseNetwork(in); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "default, none or host") {
			t.Errorf("ParseNetwork(%q) = %v, want an invalid error naming the modes", in, err)
		}
	}
}

func TestCheckNetwork(t *testing.T) {
	if err := CheckNetwork("host", true); err != nil {
		t.Errorf("host allowed: %v", err)
	}
	for _, n := range []string{"", "none"} {
		if err := CheckNetwork(n, false); err != nil {
			t.Errorf("CheckNetwork(%q, false) = %v", n, err)
		}
	}
	err := CheckNetwork("host", false)
	if !errors.Is(err, ErrNetworkHost) || !strings.Contains(err.Error(), "allow_network_host") {
		t.Errorf("host refused with %v, want ErrNetworkHost naming allow_network_host", err)
	}
}

func TestParseExtraHost(t *testing.T) {
	good := map[string]string{
		"db:10.0.0.5":               "db:10.0.0.5",
		"db=10.0.0.5":               "db:10.0.0.5",
		"v6:::1":                    "v6:::1",
		"v6=[2001:db8::1]":          "v6:2001:db8::1",
		"my.registry.local:1.2.3.4": "my.registry.local:1.2.3.4",
	}
	for in, want := range good {
		if got, err := ParseExtraHost(in); err != nil || got != want {
			t.Errorf("ParseExtraHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"db", "db:", ":1.2.3.4", "db:notanip", "db:host-gateway", "d b:1.2.3.4", "db:1.2.3.4.5", "db:fe80::1%eth0"} {
		if _, err := ParseExtraHost(in); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "--add-host") {
			t.Errorf("ParseExtraHost(%q) = %v, want an invalid error", in, err)
		}
	}
	if n, ip := SplitExtraHost("v6:2001:db8::1"); n != "v6" || ip != "2001:db8::1" {
		t.Errorf("SplitExtraHost = %q %q", n, ip)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"1024": 1024, "64m": 64 << 20, "64M": 64 << 20, "1g": 1 << 30, "1GiB": 1 << 30, "2kb": 2048, "1.5k": 1536, "10b": 10}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "m", "12x", "-1", "1e3", "99999999p"} {
		if _, err := ParseSize(in); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("ParseSize(%q) = %v, want invalid", in, err)
		}
	}
}

func TestParseUlimit(t *testing.T) {
	good := map[string][2]int64{"nofile=1024:2048": {1024, 2048}, "nproc=512": {512, 512}, "core=-1": {-1, -1}, "memlock=100:-1": {100, -1}}
	for in, want := range good {
		u, err := ParseUlimit(in)
		if err != nil || u.Soft != want[0] || u.Hard != want[1] {
			t.Errorf("ParseUlimit(%q) = %v, %v; want %v", in, u, err, want)
		}
	}
	for _, in := range []string{"nofile", "nofile=", "bogus=1", "nofile=2048:1024", "nofile=a", "nofile=1:b", "nofile=-2", "nofile=-1:10"} {
		if _, err := ParseUlimit(in); !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "--ulimit") {
			t.Errorf("ParseUlimit(%q) = %v, want an invalid error", in, err)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := &kilnv1.BuildSpec{Network: "none", ExtraHosts: []string{"db:10.0.0.5"}, ShmSizeBytes: 1 << 26,
		Ulimits: []*kilnv1.Ulimit{{Name: "nofile", Soft: 10, Hard: 20}}, DockerfileInline: []byte("FROM scratch\n")}
	if err := Validate(ok); err != nil {
		t.Fatalf("Validate(valid) = %v", err)
	}
	bad := map[string]*kilnv1.BuildSpec{
		"network":      {Network: "bridge"},
		"extra host":   {ExtraHosts: []string{"db=10.0.0.5"}},
		"shm":          {ShmSizeBytes: -1},
		"ulimit name":  {Ulimits: []*kilnv1.Ulimit{{Name: "x", Soft: 1, Hard: 1}}},
		"ulimit twice": {Ulimits: []*kilnv1.Ulimit{{Name: "nofile", Soft: 1, Hard: 1}, {Name: "nofile", Soft: 2, Hard: 2}}},
		"ulimit order": {Ulimits: []*kilnv1.Ulimit{{Name: "nofile", Soft: 3, Hard: 1}}},
	}
	for name, spec := range bad {
		if err := Validate(spec); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("%s: Validate = %v, want invalid", name, err)
		}
	}
	big := &kilnv1.BuildSpec{DockerfileInline: make([]byte, MaxDockerfileBytes+1)}
	if err := Validate(big); !errors.Is(err, rules.ErrOverLimit) {
		t.Errorf("big Dockerfile: %v, want over limit", err)
	}
	many := &kilnv1.BuildSpec{}
	for range MaxExtraHosts + 1 {
		many.ExtraHosts = append(many.ExtraHosts, "h:1.2.3.4")
	}
	if err := Validate(many); !errors.Is(err, rules.ErrOverLimit) {
		t.Errorf("many hosts: %v, want over limit", err)
	}
}
