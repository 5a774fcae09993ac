package secretid

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/proto/rules"
)

func TestValid(t *testing.T) {
	tests := []struct {
		id   string
		want string // "" valid
	}{
		{id: "npm_token"},
		{id: "aws.credentials-2"},
		{id: "A"},
		{id: strings.Repeat("x", MaxIDLen)},
		{id: "", want: "empty"},
		{id: strings.Repeat("x", MaxIDLen+1), want: "at most 128"},
		{id: ".", want: "not allowed"},
		{id: "..", want: "not allowed"},
		{id: "a/b", want: "only letters"},
		{id: "a b", want: "only letters"},
		{id: "a=b", want: "only letters"},
		{id: "ünïcode", want: "only letters"},
		{id: "a\n", want: "only letters"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.20q", tt.id), func(t *testing.T) {
			err := Valid(tt.id)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Valid(%q) = %v", tt.id, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, rules.ErrInvalid)):
				t.Fatalf("Valid(%q) = %v, want an invalid error containing %q", tt.id, err, tt.want)
			}
		})
	}
}

func TestCheckSet(t *testing.T) {
	many := map[string]int{}
	for i := range MaxSecrets + 1 {
		many[fmt.Sprintf("s%d", i)] = 1
	}
	most := map[string]int{}
	for i := range MaxSecrets {
		most[fmt.Sprintf("s%d", i)] = 1
	}
	tests := []struct {
		name  string
		sizes map[string]int
		want  string // "" valid
	}{
		{name: "none", sizes: nil},
		{name: "largest value", sizes: map[string]int{"big": MaxValueBytes}},
		{name: "most secrets", sizes: most},
		{name: "value too large", sizes: map[string]int{"big": MaxValueBytes + 1}, want: `secret "big" is 512001 bytes, over the limit of 512000 bytes`},
		{name: "too large together", sizes: map[string]int{"a": 300 << 10, "b": 300 << 10}, want: "614400 bytes together, over the limit of 524288 bytes"},
		{name: "too many", sizes: many, want: "101 build secrets given, at most 100 allowed"},
		{name: "bad id", sizes: map[string]int{"a/b": 1}, want: `secret id "a/b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckSet(tt.sizes)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("CheckSet = %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, rules.ErrInvalid)):
				t.Fatalf("CheckSet = %v, want an invalid error containing %q", err, tt.want)
			}
		})
	}
}

// FuzzValid: an accepted id is a single path element BuildKit can mount
// under /run/secrets.
func FuzzValid(f *testing.F) {
	for _, s := range []string{"npm", ".", "..", "a/b", "", "x.y-z_1", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if Valid(id) != nil {
			return
		}
		if id == "" || id == "." || id == ".." || len(id) > MaxIDLen || strings.ContainsAny(id, "/\\\x00 \n=") {
			t.Fatalf("Valid accepted %q", id)
		}
	})
}
