package registryhost

import (
	"errors"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "docker.io"},
		{"docker.io", "docker.io"},
		{"index.docker.io", "docker.io"},
		{"registry-1.docker.io", "docker.io"},
		{"registry.hub.docker.com", "docker.io"},
		{"https://index.docker.io/v1/", "docker.io"},
		{"ghcr.io", "ghcr.io"},
		{"GHCR.io", "ghcr.io"},
		{"127.0.0.1:5000", "127.0.0.1:5000"},
		{"http://127.0.0.1:5000", "127.0.0.1:5000"},
		{"https://registry.example.com/v2/team", "registry.example.com"},
		{"registry.example.com/team/app", "registry.example.com"},
		{"[::1]:5000", "[::1]:5000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := Normalize(tt.in); got != tt.want {
				t.Errorf("Normalize(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestValid(t *testing.T) {
	tests := []struct {
		host string
		ok   bool
	}{
		{"docker.io", true},
		{"ghcr.io", true},
		{"127.0.0.1:5000", true},
		{"[::1]:5000", true},
		{"localhost", true},
		{"", false},
		{"GHCR.io", false},
		{"https://ghcr.io", false},
		{"ghcr.io/team", false},
		{"-bad.io", false},
		{"a b", false},
		{"host:123456", false},
		{strings.Repeat("a", MaxLen+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			err := Valid(tt.host)
			if (err == nil) != tt.ok {
				t.Fatalf("Valid(%q) = %v, want ok %v", tt.host, err, tt.ok)
			}
			if err != nil && (!errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "is not a registry host")) {
				t.Fatalf("Valid(%q) = %v, want an invalid error naming the rule", tt.host, err)
			}
		})
	}
}

// FuzzNormalize: whatever a docker config or an image reference names,
// the name is lower case, holds no scheme or path, and normalising it
// again changes nothing.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"", "https://index.docker.io/v1/", "GHCR.IO", "127.0.0.1:5000/x", "a://b://c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, address string) {
		h := Normalize(address)
		if h == "" || strings.Contains(h, "/") || strings.ToLower(h) != h {
			t.Fatalf("Normalize(%q) = %q", address, h)
		}
		if Normalize(h) != h {
			t.Fatalf("Normalize(%q) = %q, then %q", address, h, Normalize(h))
		}
	})
}
