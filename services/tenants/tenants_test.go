package tenants

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// hashOf hashes a token once per test binary run (argon2id is slow).
var hashOf = sync.OnceValues(func() (map[string]string, error) {
	out := map[string]string{}
	for _, tok := range []string{"kiln_tokena", "kiln_tokenb"} {
		h, err := HashToken(tok)
		if err != nil {
			return nil, err
		}
		out[tok] = h
	}
	b, err := bcrypt.GenerateFromPassword([]byte("kiln_tokenbcrypt"), bcrypt.MinCost)
	out["kiln_tokenbcrypt"] = string(b)
	return out, err
})

func hashes(t *testing.T) map[string]string {
	t.Helper()
	h, err := hashOf()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewToken(t *testing.T) {
	a, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewToken()
	if a == b || !strings.HasPrefix(a, TokenPrefix) || len(a) < len(TokenPrefix)+26 {
		t.Fatalf("tokens %q %q: want distinct kiln_ tokens with >=128 bits", a, b)
	}
}

func TestParseAndAuthenticate(t *testing.T) {
	h := hashes(t)
	file := "tenants:\n" +
		"  - name: team-a\n    tokens: ['" + h["kiln_tokena"] + "']\n    push: ['registry.example.com/team-a/*']\n    weight: 3\n    max_concurrent: 2\n    log_max_bytes: 1048576\n" +
		"  - name: ops\n    admin: true\n    tokens: ['" + h["kiln_tokenb"] + "', '" + h["kiln_tokenbcrypt"] + "']\n"
	s, err := Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 2 || s.Lookup("ops") == nil || !s.Lookup("ops").Admin {
		t.Fatalf("parsed %+v", s.Tenants())
	}
	for tok, want := range map[string]string{"kiln_tokena": "team-a", "kiln_tokenb": "ops", "kiln_tokenbcrypt": "ops"} {
		for range 2 { // the second time from the cache
			id, err := s.Authenticate(tok)
			if err != nil || id.Tenant.Name != want || id.Credential == "" {
				t.Fatalf("Authenticate(%s) = %+v, %v; want tenant %s", tok, id, err, want)
			}
			if !s.HasCredential(want, id.Credential) {
				t.Fatalf("HasCredential(%s) false", want)
			}
		}
	}
	if _, err := s.Authenticate("kiln_wrong"); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("wrong token: %v", err)
	}
	p := s.Lookup("team-a").BuildPolicy()
	if p.Weight != 3 || p.MaxConcurrent != 2 || p.LogMaxBytes != 1<<20 || p.AllowRemoteAdd {
		t.Fatalf("policy %+v", p)
	}
}

func TestParseErrors(t *testing.T) {
	h := hashes(t)["kiln_tokena"]
	for _, tc := range []struct{ name, file, want string }{
		{"empty", "", "empty"},
		{"unknown field", "tenants:\n  - name: a\n    tokens: ['" + h + "']\n    wieght: 2\n", "line 4: field wieght not found"},
		{"bad name", "tenants:\n  - name: Team A\n    tokens: ['" + h + "']\n", `line 2: tenant name "Team A"`},
		{"no tokens", "tenants:\n  - name: a\n", `line 2: tenant "a" has no tokens`},
		{"plaintext token", "tenants:\n  - name: a\n    tokens: ['kiln_secret']\n", "token 1: token hash is not"},
		{"duplicate tenant", "tenants:\n  - name: a\n    tokens: ['" + h + "']\n  - name: a\n    tokens: ['" + h + "']\n", `line 4: tenant "a" is listed twice`},
		{"bad push", "tenants:\n  - name: a\n    tokens: ['" + h + "']\n    push: ['reg.io/*/x']\n", `push namespace "reg.io/*/x"`},
		{"negative", "tenants:\n  - name: a\n    tokens: ['" + h + "']\n    max_concurrent: -1\n", "max_concurrent is negative"},
		{"negative log limit", "tenants:\n  - name: a\n    tokens: ['" + h + "']\n    log_max_bytes: -5\n", "log_max_bytes is negative"},
		{"no tenants", "tenants: []\n", "no tenants"},
		{"two documents", "tenants: []\n---\ntenants: []\n", "one YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v; want an error with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "kiln_secret") {
				t.Fatalf("error quotes the token: %v", err)
			}
		})
	}
}

func TestParseHash(t *testing.T) {
	h := hashes(t)["kiln_tokena"]
	for _, tc := range []struct {
		name string
		hash string
		ok   bool
	}{
		{"argon2id", h, true},
		{"bcrypt", hashes(t)["kiln_tokenbcrypt"], true},
		{"argon2i", strings.Replace(h, "argon2id", "argon2i", 1), false},
		{"version", strings.Replace(h, "v=19", "v=16", 1), false},
		{"huge memory", strings.Replace(h, "m=19456", "m=99999999", 1), false},
		{"huge time", strings.Replace(h, "t=2", "t=1000", 1), false},
		{"zero lanes", strings.Replace(h, "p=1", "p=0", 1), false},
		{"short", "$argon2id$v=19$m=19456,t=2,p=1$", false},
		{"bcrypt truncated", "$2b$10$abc", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseHash(tc.hash); (err == nil) != tc.ok {
				t.Fatalf("ParseHash: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMayPush(t *testing.T) {
	tn := &Tenant{Name: "a", PushNamespaces: []string{"Registry.Example.com/team-a/*", "127.0.0.1:5000/a/app", "index.docker.io/teama/*", "localhost:5000/*"}}
	for repo, want := range map[string]bool{
		"registry.example.com/team-a/app":     true,
		"registry.example.com/team-a/sub/app": true,
		"registry.example.com/team-a":         false,
		"registry.example.com/team-ab/app":    false,
		"registry.example.com/team-b/app":     false,
		"127.0.0.1:5000/a/app":                true,
		"127.0.0.1:5000/a/app2":               false,
		"docker.io/teama/x":                   true,
		"docker.io/library/alpine":            false,
		"localhost:5000/anything/x":           true,
	} {
		if got := tn.MayPush(repo); got != want {
			t.Errorf("MayPush(%s) = %v, want %v", repo, got, want)
		}
	}
	for in, want := range map[string]string{
		"alpine": "docker.io/library/alpine", "teama/x": "docker.io/teama/x", "Index.Docker.IO/teama/x": "docker.io/teama/x",
		"localhost/x": "localhost/x", "127.0.0.1:5000/x": "127.0.0.1:5000/x",
	} {
		if got := NormalizeRepository(in); got != want {
			t.Errorf("NormalizeRepository(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestAddToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tenants.yaml")
	tokA, created, err := AddToken(path, AddRequest{Name: "team-a", Push: []string{"registry.example.com/team-a/*"}})
	if err != nil || !created {
		t.Fatalf("AddToken: %v created=%v", err, created)
	}
	data, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("# operators' note\n"), data...), 0o600)
	tokA2, created, err := AddToken(path, AddRequest{Name: "team-a"})
	if err != nil || created {
		t.Fatalf("rotation: %v created=%v", err, created)
	}
	if _, _, err := AddToken(path, AddRequest{Name: "ops", Admin: true}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	data, _ = os.ReadFile(path)
	if strings.Contains(string(data), tokA) || !strings.Contains(string(data), "# operators' note") {
		t.Fatalf("file holds the token or lost its comment:\n%s", data)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{tokA, tokA2} {
		if id, err := s.Authenticate(tok); err != nil || id.Tenant.Name != "team-a" {
			t.Fatalf("Authenticate: %+v %v", id, err)
		}
	}
	if !s.Lookup("ops").Admin || s.Lookup("team-a").Admin || len(s.Lookup("team-a").TokenHashes) != 2 {
		t.Fatalf("tenants %+v", s.Tenants())
	}
	if _, _, err := AddToken(path, AddRequest{Name: "Bad Name"}); err == nil {
		t.Fatal("bad name accepted")
	}
}
